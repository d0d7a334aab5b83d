"""The Celery app. Queues: realtime (a partner is waiting), deliveries, default.

All options live in config/settings.py as CELERY_* so this module reads no settings at
import time.
"""

import os

from celery import Celery
from django_structlog.celery.steps import DjangoStructLogInitStep
from kombu.transport import TRANSPORT_ALIASES

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

# The embedded default broker: kombu's file-system transport with its read/write race
# fixed (see config/broker.py). Registered as an alias so CELERY_BROKER_URL can name it.
TRANSPORT_ALIASES["leadrelay-fs"] = "config.broker:Transport"

app = Celery("leadrelay")
# Binds task id / name to every log line of a task and clears what a previous task on the
# same thread bound (so a lead_id never leaks into the next task's lines).
app.steps["worker"].add(DjangoStructLogInitStep)
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
