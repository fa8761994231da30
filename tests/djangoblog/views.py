"""Views as a user would write them; authentication of /posts runs in the view (like DRF)."""

from django.http import HttpResponse, JsonResponse

from auditaspect import audited, current_context
from auditaspect.contrib.django import audit_view

PASSWORD = "correct-horse-battery-staple"
TOKENS = {"tok-alice-0123456789": "alice"}


class TokenUser:
    """What an authenticator sets on request.user (DRF sets the Django request's too)."""

    is_authenticated = True

    def __init__(self, name):
        self.name = name

    def get_username(self):
        return self.name


def form_details(call):
    # The whole form, password included: redaction must keep it out of the log.
    return {"username": call.instance.POST.get("username"), "form": call.instance.POST.dict()}


@audited("resource_modified")
def publish(title):
    return title


@audit_view("session_created", methods=("POST",), extractor=form_details)
def register(request):
    if request.method == "GET":
        return HttpResponse("<form method=post>register</form>")
    return HttpResponse("registered", status=201)


@audit_view("auth_success", on_error="auth_failure", extractor=form_details)
def login(request):
    if request.method == "GET":
        return HttpResponse("<form method=post>login</form>")
    if request.POST.get("password") != PASSWORD:
        return HttpResponse("invalid credentials", status=401)
    request.user = TokenUser(request.POST["username"])
    return HttpResponse("welcome")


def posts(request):
    if request.method == "GET":
        return JsonResponse({"posts": []})
    token = request.headers.get("Authorization", "").removeprefix("Bearer ")
    name = TOKENS.get(token)
    if name is None:
        return HttpResponse("bad token", status=401)
    request.user = TokenUser(name)  # authentication after the middleware
    return JsonResponse({"published": publish(request.POST["title"])})


@audit_view("entity_deleted")
def delete(request, name):
    if name == "boom":
        raise RuntimeError("storage offline")
    return HttpResponse("deleted")


def whoami(request):
    context = current_context()
    return JsonResponse({"ip": context.ip, "correlation_id": context.correlation_id})


def queue(request):
    """Queue a Celery task (tests/test_celery.py writes audit_tasks) and wait for it."""
    import audit_tasks

    request.user = TokenUser(request.headers["X-User"])
    return JsonResponse({"done": audit_tasks.purge.delay("q").get(timeout=60)})
