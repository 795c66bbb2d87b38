from rest_framework.routers import DefaultRouter

from training.api.views import ModelVersionViewSet, RoundViewSet, TrainingJobViewSet

router = DefaultRouter()
router.register("training-jobs", TrainingJobViewSet, basename="training-job")
router.register("model-versions", ModelVersionViewSet, basename="model-version")
router.register("rounds", RoundViewSet, basename="round")

urlpatterns = router.urls
