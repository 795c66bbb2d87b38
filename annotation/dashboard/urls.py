from django.urls import path

from annotation.dashboard import views

app_name = "dashboard"

urlpatterns = [
    path("", views.campaign_list, name="campaigns"),
    path("campaigns/new/", views.campaign_create, name="campaign-create"),
    path("campaigns/<int:campaign_id>/", views.campaign_detail, name="campaign"),
    path("campaigns/<int:campaign_id>/edit/", views.campaign_edit, name="campaign-edit"),
    path("campaigns/<int:campaign_id>/status/", views.campaign_status, name="campaign-status"),
    path("campaigns/<int:campaign_id>/members/", views.members_add, name="members-add"),
    path("campaigns/<int:campaign_id>/members/remove/", views.member_remove, name="member-remove"),
    path("campaigns/<int:campaign_id>/invite/", views.labeller_invite, name="labeller-invite"),
    path("campaigns/<int:campaign_id>/guidelines/", views.guidelines, name="guidelines"),
    path("guidelines/preview/", views.guidelines_preview, name="guidelines-preview"),
    path("campaigns/<int:campaign_id>/import/", views.campaign_import, name="import"),
    path("campaigns/<int:campaign_id>/quality/", views.campaign_quality, name="quality"),
    path(
        "campaigns/<int:campaign_id>/labellers/<int:user_id>/",
        views.labeller_detail,
        name="labeller",
    ),
    path("campaigns/<int:campaign_id>/tasks/", views.task_list, name="tasks"),
    path("campaigns/<int:campaign_id>/tasks/<int:task_id>/", views.task_detail, name="task"),
    path(
        "campaigns/<int:campaign_id>/tasks/<int:task_id>/gold/", views.task_gold, name="task-gold"
    ),
    path("campaigns/<int:campaign_id>/review/", views.review_queue, name="review"),
    path(
        "campaigns/<int:campaign_id>/review/<int:task_id>/",
        views.review_task,
        name="review-task",
    ),
]
