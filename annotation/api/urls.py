from rest_framework.routers import DefaultRouter

from annotation.api.views import AssignmentViewSet, CampaignViewSet, RankingViewSet

router = DefaultRouter()
router.register("campaigns", CampaignViewSet, basename="campaign")
router.register("assignments", AssignmentViewSet, basename="assignment")
router.register("rankings", RankingViewSet, basename="ranking")

urlpatterns = router.urls
