"""The only Celery code: the app, broker resolution, the run task, publishing and submission."""
