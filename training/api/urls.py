from django.urls import re_path
from rest_framework.routers import DefaultRouter

from training.api.views import (
    CampaignAcquisitionView,
    ModelVersionViewSet,
    RoundViewSet,
    TrainingJobViewSet,
)

router = DefaultRouter()
router.register("training-jobs", TrainingJobViewSet, basename="training-job")
router.register("model-versions", ModelVersionViewSet, basename="model-version")
router.register("rounds", RoundViewSet, basename="round")

urlpatterns = [
    re_path(
        r"^campaigns/(?P<campaign_id>[0-9]+)/acquisition/$",
        CampaignAcquisitionView.as_view(),
        name="campaign-acquisition",
    ),
    *router.urls,
]
