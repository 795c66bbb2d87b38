from rest_framework.routers import DefaultRouter

from training.api.views import ModelVersionViewSet, TrainingJobViewSet

router = DefaultRouter()
router.register("training-jobs", TrainingJobViewSet, basename="training-job")
router.register("model-versions", ModelVersionViewSet, basename="model-version")

urlpatterns = router.urls
