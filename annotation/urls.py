from django.urls import path

from annotation import views

app_name = "annotation"

urlpatterns = [
    path("", views.home, name="home"),
    path("campaigns/<int:campaign_id>/guidelines/", views.guidelines, name="guidelines"),
    path("campaigns/<int:campaign_id>/label/", views.label, name="label"),
    path("assignments/<int:assignment_id>/", views.assignment, name="assignment"),
    path("assignments/<int:assignment_id>/edit/", views.assignment_edit, name="assignment-edit"),
    path("history/", views.history, name="history"),
]
