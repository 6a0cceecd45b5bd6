"""The test suite: a package, so that its helper modules import one way everywhere (`from tests.x import ...`)."""
