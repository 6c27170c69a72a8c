"""The web edge: the webhook endpoint, health and metrics, and the gunicorn worker class."""
