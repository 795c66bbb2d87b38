from django.urls import path
from rest_framework.routers import DefaultRouter

from annotation.api.views import (
    AssignmentViewSet,
    CampaignViewSet,
    LabellersInviteView,
    RankingViewSet,
)

router = DefaultRouter()
router.register("campaigns", CampaignViewSet, basename="campaign")
router.register("assignments", AssignmentViewSet, basename="assignment")
router.register("rankings", RankingViewSet, basename="ranking")

urlpatterns = [
    path("labellers/invite/", LabellersInviteView.as_view(), name="labellers-invite"),
    *router.urls,
]
