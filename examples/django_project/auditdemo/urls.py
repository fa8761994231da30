from django.urls import path

from . import views

urlpatterns = [path("login", views.login), path("config/<str:key>", views.set_config)]
