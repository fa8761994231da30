"""Views with no audit code in their bodies: audit_view and the @audited service do it."""

from django.http import HttpResponse, JsonResponse
from django.views.decorators.csrf import csrf_exempt

from auditaspect.contrib.django import audit_view
from planning import ConfigService, Store

USERS = {"alice": "correct-horse-battery-staple"}
config = ConfigService(Store())


class DemoUser:
    is_authenticated = True

    def __init__(self, name):
        self.name = name

    def get_username(self):
        return self.name


@csrf_exempt
@audit_view("auth_success", on_error="auth_failure")
def login(request):
    name = request.POST.get("username", "")
    if USERS.get(name) != request.POST.get("password"):
        return HttpResponse("invalid credentials", status=401)
    request.user = DemoUser(name)  # your authentication; read lazily by the middleware
    return HttpResponse("welcome")


@csrf_exempt
def set_config(request, key):
    request.user = DemoUser(request.headers.get("X-User", "anonymous"))
    previous = config.set_value(key, request.POST.get("value", ""), user=request.user.name)
    return JsonResponse({"key": key, "previous": previous})
