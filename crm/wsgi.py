import os
from importlib import import_module

from django.conf import settings
from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "crm.settings")
application = get_wsgi_application()
# Import the URLconf, and with it every view, API and serializer module, now: left to
# the first request, each gunicorn worker would spend its first second importing.
import_module(settings.ROOT_URLCONF)
