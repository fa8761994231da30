import os
import sys
from pathlib import Path

from django.core.wsgi import get_wsgi_application

sys.path.insert(0, str(Path(__file__).resolve().parent.parent.parent))  # planning.py
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "auditdemo.settings")
application = get_wsgi_application()
