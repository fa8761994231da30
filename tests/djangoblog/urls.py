from django.urls import path

from . import views

urlpatterns = [
    path("register", views.register),
    path("login", views.login),
    path("posts", views.posts),
    path("items/<str:name>/delete", views.delete),
    path("whoami", views.whoami),
    path("queue", views.queue),
]
