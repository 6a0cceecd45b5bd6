"""Run notifications: the channels (email, webhook) and the DAG's notifier around them."""
