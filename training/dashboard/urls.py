from django.urls import path

from training.dashboard import views

app_name = "training-dashboard"

urlpatterns = [
    path("", views.job_list, name="jobs"),
    path("new/<slug:kind>/", views.job_create, name="job-create"),
    path("jobs/<int:job_id>/", views.job_detail, name="job"),
    path("jobs/<int:job_id>/cancel/", views.job_cancel, name="job-cancel"),
    path("jobs/<int:job_id>/retry/", views.job_retry, name="job-retry"),
    path("models/", views.model_list, name="models"),
    path("models/register/", views.model_register, name="model-register"),
    path("rounds/new/", views.round_create, name="round-create"),
]
