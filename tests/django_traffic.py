"""The SQL Django's ORM sends for its own contrib apps, against the PostgreSQL database at
argv[1] (run in a process of its own by tests/test_audit.py: Django's settings are global).
Each app's work runs on a connection named after the app (application_name), as if each
were a service of its own: the migrations (as `migrate`), then contenttypes, auth (users,
groups, permissions), sessions (a login and a request through the middleware, with
Django's test client) and admin (changing a user, its log, the recent actions). Prints
the server's time after the migrations, for `charter audit --since`."""

from __future__ import annotations

import sys
import time
from urllib.parse import urlsplit

import django
from django.conf import settings
from django.http import HttpRequest, HttpResponse
from django.urls import path


def whoami(request: HttpRequest) -> HttpResponse:
    return HttpResponse(request.user.get_username())


urlpatterns = [path("whoami/", whoami)]


def configure(url: str) -> None:
    parts = urlsplit(url)
    settings.configure(
        DATABASES={
            "default": {
                "ENGINE": "django.db.backends.postgresql",
                "NAME": parts.path.lstrip("/"),
                "USER": parts.username or "postgres",
                "HOST": parts.hostname,
                "PORT": parts.port,
                "OPTIONS": {"application_name": "migrate"},
            }
        },
        INSTALLED_APPS=[
            "django.contrib.contenttypes",
            "django.contrib.auth",
            "django.contrib.sessions",
            "django.contrib.admin",
        ],
        MIDDLEWARE=[
            "django.contrib.sessions.middleware.SessionMiddleware",
            "django.contrib.auth.middleware.AuthenticationMiddleware",
        ],
        ROOT_URLCONF=__name__,
        SECRET_KEY="charter-audit-test",
        ALLOWED_HOSTS=["testserver"],
        USE_TZ=True,
        PASSWORD_HASHERS=["django.contrib.auth.hashers.MD5PasswordHasher"],  # fast, for a test
    )
    django.setup()


def as_app(name: str) -> None:
    """The next statements run on a new connection named `name`."""
    from django.contrib.contenttypes.models import ContentType
    from django.db import connection

    connection.close()
    connection.settings_dict["OPTIONS"]["application_name"] = name
    ContentType.objects.clear_cache()  # each "service" asks for itself


def main(url: str) -> None:
    configure(url)
    from django.contrib.admin.models import CHANGE, LogEntry
    from django.contrib.auth.models import Group, Permission, User
    from django.contrib.contenttypes.models import ContentType
    from django.core.management import call_command
    from django.db import connection
    from django.test import Client

    call_command("migrate", verbosity=0, skip_checks=True)
    with connection.cursor() as cursor:
        cursor.execute("SELECT now()")
        since = cursor.fetchone()[0].isoformat()
    time.sleep(0.01)  # the log keeps milliseconds

    as_app("contenttypes")
    thing, _ = ContentType.objects.get_or_create(app_label="shop", model="thing")
    ContentType.objects.get_for_model(User)

    as_app("auth")
    users = [User.objects.create_user(f"user{n}", password="secret") for n in range(5)]
    editors = Group.objects.create(name="editors")
    view = Permission.objects.create(codename="view_thing", name="Can view", content_type=thing)
    editors.permissions.add(view)
    users[0].groups.add(editors)
    users[1].user_permissions.add(view)
    assert users[0].has_perm("shop.view_thing")  # reads permissions by content type

    as_app("sessions")
    client = Client()
    assert client.login(username="user0", password="secret")  # updates auth_user.last_login
    assert client.get("/whoami/").content == b"user0"

    as_app("admin")
    changed = User.objects.get(username="user2")
    changed.first_name = "Changed"
    changed.save()
    LogEntry.objects.log_actions(
        users[0].pk, [changed], CHANGE, change_message="first name", single_object=True
    )
    recent = list(LogEntry.objects.select_related("user", "content_type")[:10])
    assert recent and recent[0].user.username == "user0"
    connection.close()
    print(since)


if __name__ == "__main__":
    main(sys.argv[1])
