"""Account pages: log in (rate limited), change the password (required at first login for
invited accounts), and reset it by email, which exists only where email is configured
(``EMAIL_HOST``): without it the reset pages answer 404 and the login page offers no link,
rather than saying "sent" for a message that never leaves."""

from __future__ import annotations

from functools import wraps

from django.conf import settings
from django.contrib.auth import views as auth_views
from django.http import Http404
from django.utils.http import url_has_allowed_host_and_scheme

from accounts import services
from config.login_limits import RateLimitedAuthenticationForm


def password_reset_enabled() -> bool:
    return bool(settings.EMAIL_HOST)


class LoginView(auth_views.LoginView):
    authentication_form = RateLimitedAuthenticationForm

    def get_context_data(self, **kwargs):
        context = super().get_context_data(**kwargs)
        context["password_reset_enabled"] = password_reset_enabled()
        return context


class PasswordChangeView(auth_views.PasswordChangeView):
    """Django's view; choosing a password lifts the first-login rule, and the ``next`` page
    the rule interrupted is where the user goes on to."""

    def get_context_data(self, **kwargs):
        context = super().get_context_data(**kwargs)
        context["required"] = bool(self.request.session.get(services.SESSION_PASSWORD_CHANGE_KEY))
        context["next"] = self._next() or ""
        return context

    def form_valid(self, form):
        response = super().form_valid(form)
        services.account_password_chosen(user=form.user)
        self.request.session.pop(services.SESSION_PASSWORD_CHANGE_KEY, None)
        return response

    def get_success_url(self):
        return self._next() or super().get_success_url()

    def _next(self) -> str | None:
        target = self.request.POST.get("next") or self.request.GET.get("next")
        if target and url_has_allowed_host_and_scheme(
            target, allowed_hosts={self.request.get_host()}, require_https=self.request.is_secure()
        ):
            return target
        return None


def _only_with_email(view):
    @wraps(view)
    def wrapped(request, *args, **kwargs):
        if not password_reset_enabled():
            raise Http404("password reset needs an email backend (EMAIL_HOST)")
        return view(request, *args, **kwargs)

    return wrapped


class PasswordResetConfirmView(auth_views.PasswordResetConfirmView):
    def form_valid(self, form):
        response = super().form_valid(form)
        services.account_password_chosen(user=form.user)
        return response


password_reset = _only_with_email(auth_views.PasswordResetView.as_view())
password_reset_done = _only_with_email(auth_views.PasswordResetDoneView.as_view())
password_reset_confirm = _only_with_email(PasswordResetConfirmView.as_view())
password_reset_complete = _only_with_email(auth_views.PasswordResetCompleteView.as_view())
