"""Settings of the test Django project: no Django database, the audit sink from $AUDIT_URL."""

import os

SECRET_KEY = "test-only-not-secret"
DEBUG = False
ALLOWED_HOSTS = ["*"]
ROOT_URLCONF = "djangoblog.urls"
INSTALLED_APPS = ["auditaspect.contrib.django"]
MIDDLEWARE = ["auditaspect.contrib.django.AuditMiddleware"]
DATABASES: dict = {}
USE_TZ = True
AUDITASPECT = {
    "DATABASE_URL": os.environ.get("AUDIT_URL"),
    "SINK_OPTIONS": {"mode": os.environ.get("AUDIT_MODE", "sync")},
    "TRUSTED_PROXIES": 1,
}
LOGGING_CONFIG = None
