"""A Django project audited by auditaspect: the app, the middleware and one settings dict.

python -m pip install '.[django]'
cd examples/django_project
python manage.py runserver 127.0.0.1:8001
curl -X POST localhost:8001/login -d username=alice -d password=wrong
python manage.py auditaspect query
"""

import os

SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "example-only-change-me")
DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]
ROOT_URLCONF = "auditdemo.urls"
INSTALLED_APPS = ["auditaspect.contrib.django"]
MIDDLEWARE = ["auditaspect.contrib.django.AuditMiddleware"]
DATABASES: dict = {}
USE_TZ = True
AUDITASPECT = {
    "DATABASE_URL": os.environ.get("AUDIT_URL", "sqlite:///audit.db"),
    "SINK_OPTIONS": {"mode": "sync"},
    "TRUSTED_PROXIES": 0,
}
