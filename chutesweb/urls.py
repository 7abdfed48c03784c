from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import include, path

from chat import views as chat_views
from chat.accounts import AdminLoginForm, ThrottledLoginView, admin_login

admin.site.login_form = AdminLoginForm

urlpatterns = [
    # Before the admin's own routes: the same page, saying when log-ins are throttled.
    path("admin/login/", admin_login),
    path("admin/", admin.site.urls),
    path("accounts/signup/", chat_views.signup, name="signup"),
    path("accounts/login/", ThrottledLoginView.as_view(), name="login"),
    path("accounts/logout/", auth_views.LogoutView.as_view(), name="logout"),
    path(
        "accounts/password/",
        auth_views.PasswordChangeView.as_view(),
        name="password_change",
    ),
    path(
        "accounts/password/done/",
        auth_views.PasswordChangeDoneView.as_view(),
        name="password_change_done",
    ),
    path("healthz", chat_views.healthz, name="healthz"),
    path("", include("chat.urls")),
]
