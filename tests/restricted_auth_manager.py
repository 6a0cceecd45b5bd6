"""A test auth manager: Airflow's SimpleAuthManager, except that user "outsider" may not access the
cifar10_retraining DAG (as a FAB/Keycloak role without that DAG would) and user "no_website" may not view the
website at all -- for the plugin's permission tests."""
from __future__ import annotations

from airflow.api_fastapi.auth.managers.simple.simple_auth_manager import SimpleAuthManager

RESTRICTED_USER = "outsider"
RESTRICTED_DAG = "cifar10_retraining"
NO_WEBSITE_USER = "no_website"


class RestrictedDagAuthManager(SimpleAuthManager):
    def is_authorized_dag(self, *, method, user, access_entity=None, details=None) -> bool:
        if getattr(user, "username", None) == RESTRICTED_USER and details is not None and details.id == RESTRICTED_DAG:
            return False
        return super().is_authorized_dag(method=method, user=user, access_entity=access_entity, details=details)

    def is_authorized_view(self, *, access_view, user) -> bool:
        if getattr(user, "username", None) == NO_WEBSITE_USER:
            return False
        return super().is_authorized_view(access_view=access_view, user=user)
