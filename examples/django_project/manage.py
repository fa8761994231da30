#!/usr/bin/env python
"""The Django example's manage.py: runserver, and `auditaspect query|verify|...` on the log."""

import os
import sys
from pathlib import Path

if __name__ == "__main__":
    # The example domain (planning.py) lives one directory up.
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "auditdemo.settings")
    from django.core.management import execute_from_command_line

    execute_from_command_line(sys.argv)
