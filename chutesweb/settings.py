"""Settings for Chutes Chat.

Everything is driven by environment variables with embedded defaults, so a fresh checkout runs
on SQLite and the in-memory channel layer with no configuration at all. `DATABASE_URL` and
`REDIS_URL` switch to PostgreSQL and Redis. The README lists every variable.
"""

from __future__ import annotations

import ipaddress
import os
from decimal import Decimal, InvalidOperation
from pathlib import Path

from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent

# Only for development: refused below when DEBUG is off.
DEV_SECRET_KEY = "dev-only-insecure-secret-key-do-not-use-in-production"


def envbool(name: str, default: str) -> bool:
    value = os.getenv(name, default).strip().lower()
    if value in ("true", "1", "yes", "on"):
        return True
    if value in ("false", "0", "no", "off"):
        return False
    raise ImproperlyConfigured(f"{name} must be true or false, not {value!r}")


def envint(name: str, default: str) -> int:
    value = os.getenv(name, default).strip()
    try:
        return int(value)
    except ValueError:
        raise ImproperlyConfigured(f"{name} must be an integer, not {value!r}") from None


def envfloat(name: str, default: str) -> float:
    value = os.getenv(name, default).strip()
    try:
        return float(value)
    except ValueError:
        raise ImproperlyConfigured(f"{name} must be a number, not {value!r}") from None


def envdecimal(name: str, default: str) -> Decimal | None:
    """A money amount; blank means "none" (for example: no limit)."""
    value = os.getenv(name, default).strip()
    if not value:
        return None
    try:
        amount = Decimal(value)
    except InvalidOperation:
        raise ImproperlyConfigured(f"{name} must be a decimal number, not {value!r}") from None
    if not amount.is_finite() or amount < 0:
        raise ImproperlyConfigured(f"{name} must be a non-negative amount, not {value!r}")
    return amount


def envlist(name: str, default: str) -> list[str]:
    return [item.strip() for item in os.getenv(name, default).split(",") if item.strip()]


DEBUG = envbool("DEBUG", "true")
SECRET_KEY = os.getenv("SECRET_KEY", "") or DEV_SECRET_KEY
if not DEBUG and SECRET_KEY == DEV_SECRET_KEY:
    raise ImproperlyConfigured(
        "SECRET_KEY must be set to a long random value when DEBUG is off "
        "(for example: python -c 'import secrets; print(secrets.token_urlsafe(50))')."
    )
if not DEBUG and len(SECRET_KEY) < 32:
    raise ImproperlyConfigured("SECRET_KEY must be at least 32 characters when DEBUG is off.")

ALLOWED_HOSTS = envlist("ALLOWED_HOSTS", "localhost,127.0.0.1,[::1]")
CSRF_TRUSTED_ORIGINS = envlist("CSRF_TRUSTED_ORIGINS", "")
SITE_NAME = os.getenv("SITE_NAME", "Chutes Chat")
ALLOW_SIGNUP = envbool("ALLOW_SIGNUP", "true")

INSTALLED_APPS = [
    "daphne",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "whitenoise.runserver_nostatic",
    "django.contrib.staticfiles",
    "channels",
    "chat",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "chutesweb.urls"
ASGI_APPLICATION = "chutesweb.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "chat.context_processors.site",
            ],
        },
    },
]

# Database: SQLite beside the code unless DATABASE_URL says otherwise.
DATA_DIR = Path(os.getenv("DATA_DIR", str(BASE_DIR / "var")))
SQLITE_PATH = DATA_DIR / "db.sqlite3"
SQLITE_OPTIONS = {
    # WAL lets readers proceed while a generation flushes; IMMEDIATE takes the write lock at
    # BEGIN so two writers queue on the timeout instead of failing with "database is locked".
    "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
    "transaction_mode": "IMMEDIATE",
    "timeout": 30,
}
DATABASE_URL = os.getenv("DATABASE_URL", "")
SUPPORTED_DATABASES = ("django.db.backends.postgresql", "django.db.backends.sqlite3")
if DATABASE_URL:
    import dj_database_url

    DATABASES = {"default": dj_database_url.parse(DATABASE_URL, conn_max_age=60)}
    if DATABASES["default"]["ENGINE"] not in SUPPORTED_DATABASES:
        # The app's own SQL (prepared inserts, appended partial text) is written for these two.
        raise ImproperlyConfigured(
            "DATABASE_URL must name a PostgreSQL (postgres://) or SQLite (sqlite://) database, "
            f"not {DATABASES['default']['ENGINE'].rsplit('.', 1)[-1]}."
        )
    if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
        DATABASES["default"]["OPTIONS"] = dict(SQLITE_OPTIONS)
        DATABASES["default"]["CONN_MAX_AGE"] = None
    if DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql":
        DATABASES["default"]["CONN_HEALTH_CHECKS"] = True
else:
    DATA_DIR.mkdir(parents=True, exist_ok=True)
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": SQLITE_PATH,  # type: ignore[typeddict-item]  # Django takes a Path (stub: str)
            "OPTIONS": dict(SQLITE_OPTIONS),
            # Keep connections open: the ORM's thread would otherwise open one (and run the
            # PRAGMAs) around every database call of every reply.
            "CONN_MAX_AGE": None,
        }
    }
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # Tests get their own file, never the development database: a file (not :memory:) because
    # websocket tests touch the database from several threads, one per test run so that two
    # runs at once do not share it.
    DATABASES["default"]["TEST"] = {"NAME": str(DATA_DIR / f"test-db-{os.getpid()}.sqlite3")}
    DATA_DIR.mkdir(parents=True, exist_ok=True)

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# Channel layer: in-memory (one process) unless REDIS_URL is set.
REDIS_URL = os.getenv("REDIS_URL", "")
if REDIS_URL:
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            "CONFIG": {
                "hosts": [REDIS_URL],
                # Token streams are many small messages: room for bursts per channel, but short
                # expiry so a dead consumer does not hold memory for long.
                "capacity": envint("CHANNEL_CAPACITY", "1000"),
                "expiry": 30,
                "group_expiry": 86400,
                "prefix": os.getenv("CHANNEL_PREFIX", "chutes"),
            },
        }
    }
else:
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels.layers.InMemoryChannelLayer",
            "CONFIG": {"capacity": envint("CHANNEL_CAPACITY", "1000"), "expiry": 30},
        }
    }

# The cache holds log-in throttling counters: per process in memory, shared through Redis.
if REDIS_URL:
    CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": REDIS_URL,
            "KEY_PREFIX": os.getenv("CHANNEL_PREFIX", "chutes") + "-cache",
        }
    }
else:
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}
LOGIN_ATTEMPTS = envint("LOGIN_ATTEMPTS", "5")
LOGIN_LOCKOUT_SECONDS = envint("LOGIN_LOCKOUT_SECONDS", "900")
# Every password check is counted by the throttling backend (chat/accounts.py). ModelBackend
# stays listed only so that sessions logged in before it still load; it never sees a password.
AUTHENTICATION_BACKENDS = [
    "chat.accounts.ThrottledModelBackend",
    "django.contrib.auth.backends.ModelBackend",
]
# The reverse proxies in front of the app (addresses or networks, e.g. 127.0.0.1): from them,
# the client's address is read from X-Forwarded-For. Empty: the connection's own address.
TRUSTED_PROXIES = envlist("TRUSTED_PROXIES", "")
for _proxy in TRUSTED_PROXIES:
    try:
        ipaddress.ip_network(_proxy, strict=False)
    except ValueError:
        raise ImproperlyConfigured(
            f"TRUSTED_PROXIES must list addresses or networks, not {_proxy!r}"
        ) from None

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "chat:index"
LOGOUT_REDIRECT_URL = "login"

LANGUAGE_CODE = "en-us"
TIME_ZONE = os.getenv("TIME_ZONE", "UTC")
USE_I18N = True
USE_TZ = True

STATIC_URL = "/static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
STATIC_ROOT = Path(os.getenv("STATIC_ROOT", str(BASE_DIR / "staticfiles")))
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {
        "BACKEND": (
            "django.contrib.staticfiles.storage.StaticFilesStorage"
            if DEBUG
            else "chutesweb.storage.StaticStorage"
        )
    },
}
# In development WhiteNoise serves straight from the finders, so no collectstatic is needed.
WHITENOISE_USE_FINDERS = DEBUG
WHITENOISE_AUTOREFRESH = DEBUG

# Security headers. Cookies and HSTS tighten automatically when DEBUG is off.
X_FRAME_OPTIONS = "DENY"
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
SECURE_CROSS_ORIGIN_OPENER_POLICY = "same-origin"
SESSION_COOKIE_HTTPONLY = True
CSRF_COOKIE_HTTPONLY = False  # the chat page reads the token from the cookie for API writes
SESSION_COOKIE_SAMESITE = "Lax"
CSRF_COOKIE_SAMESITE = "Lax"
if envbool("BEHIND_TLS_PROXY", "false"):
    # Only trust X-Forwarded-Proto when a proxy we run sets it.
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
if not DEBUG:
    SESSION_COOKIE_SECURE = envbool("SECURE_COOKIES", "true")
    CSRF_COOKIE_SECURE = SESSION_COOKIE_SECURE
    SECURE_SSL_REDIRECT = envbool("SECURE_SSL_REDIRECT", "true")
    SECURE_HSTS_SECONDS = envint("SECURE_HSTS_SECONDS", "31536000")
    SECURE_HSTS_INCLUDE_SUBDOMAINS = envbool("SECURE_HSTS_INCLUDE_SUBDOMAINS", "true")
    SECURE_HSTS_PRELOAD = envbool("SECURE_HSTS_PRELOAD", "false")
    if not SECURE_HSTS_PRELOAD:
        # Joining the browsers' preload list is the domain owner's decision, not a default.
        SILENCED_SYSTEM_CHECKS = ["security.W021"]
    SECURE_REDIRECT_EXEMPT = [r"^healthz$"]

# The upstream: Chutes' chat completions API through Lava's forward proxy.
LAVA_FORWARD_URL = os.getenv("LAVA_FORWARD_URL", "https://api.lava.so/v1/forward")
CHUTES_API_BASE = os.getenv("CHUTES_API_BASE", "https://llm.chutes.ai/v1").rstrip("/")
LAVA_FORWARD_TOKEN = os.getenv("LAVA_FORWARD_TOKEN", "")
LAVA_SECRET_KEY = os.getenv("LAVA_SECRET_KEY", "")
CHUTES_API_KEY = os.getenv("CHUTES_API_KEY", "")
LAVA_CUSTOMER_ID = os.getenv("LAVA_CUSTOMER_ID", "")
LAVA_METER_SLUG = os.getenv("LAVA_METER_SLUG", "")
UPSTREAM_CONNECT_TIMEOUT = envfloat("UPSTREAM_CONNECT_TIMEOUT", "10")
UPSTREAM_IDLE_TIMEOUT = envfloat("UPSTREAM_IDLE_TIMEOUT", "300")
UPSTREAM_TOTAL_TIMEOUT = envfloat("UPSTREAM_TOTAL_TIMEOUT", "1800")
UPSTREAM_MAX_RETRIES = envint("UPSTREAM_MAX_RETRIES", "3")
DEMO_MODE = envbool("DEMO_MODE", "false")

# Streaming and limits.
STREAM_COALESCE_MS = envfloat("STREAM_COALESCE_MS", "20")
STREAM_FLUSH_SECONDS = envfloat("STREAM_FLUSH_SECONDS", "1")
STREAM_HEARTBEAT_SECONDS = envfloat("STREAM_HEARTBEAT_SECONDS", "5")
STREAM_STALE_SECONDS = envfloat("STREAM_STALE_SECONDS", "30")
REAPER_INTERVAL_SECONDS = envfloat("REAPER_INTERVAL_SECONDS", "30")
# On SIGTERM, how long running replies get to save their text and status before the exit.
SHUTDOWN_GRACE_SECONDS = envfloat("SHUTDOWN_GRACE_SECONDS", "5")
# A name for this server process that stays the same across its restarts (e.g. host and port).
# With several processes (REDIS_URL), a restarted process settles the replies it left
# `streaming` at once rather than waiting for them to go stale. One process needs none.
WORKER_NAME = os.getenv("WORKER_NAME", "").strip()[:100]
# RUNTIME_PATCHES_OFF=name,name switches runtime patches off by name, to measure each one; read
# from the environment by chutesweb/runtime, not here.
# Leave everything loaded at start-up out of the garbage collector's full passes
# (chutesweb/runtime/collector.py).
GC_FREEZE = envbool("GC_FREEZE", "true")
# Middle-generation collections between two full passes of the collector (Python's own is 10):
# each full pass pauses every stream (chutesweb/runtime/collector.py, docs/benchmarks.md).
GC_FULL_PASS_EVERY = envint("GC_FULL_PASS_EVERY", "100")
if GC_FULL_PASS_EVERY < 1:
    raise ImproperlyConfigured(f"GC_FULL_PASS_EVERY must be 1 or more, not {GC_FULL_PASS_EVERY}")
MAX_MESSAGE_CHARS = envint("MAX_MESSAGE_CHARS", "100000")
MAX_IMAGE_BYTES = envint("MAX_IMAGE_BYTES", str(5 * 1024 * 1024))
MAX_IMAGES_PER_MESSAGE = envint("MAX_IMAGES_PER_MESSAGE", "4")
# What one user's images may take in all (uploads and imports); deleting conversations frees it.
MAX_IMAGE_STORAGE_BYTES = envint("MAX_IMAGE_STORAGE_BYTES", str(200 * 1024 * 1024))
# Images uploaded but never sent with a question are removed after this long.
UNATTACHED_IMAGE_SECONDS = envint("UNATTACHED_IMAGE_SECONDS", str(24 * 60 * 60))
MAX_IMPORT_BYTES = envint("MAX_IMPORT_BYTES", str(50 * 1024 * 1024))
MAX_FRAME_CHARS = envint("MAX_FRAME_CHARS", "1000000")
MAX_CONCURRENT_GENERATIONS = envint("MAX_CONCURRENT_GENERATIONS", "3")
MESSAGES_PER_MINUTE = envint("MESSAGES_PER_MINUTE", "20")
MAX_WATCHED_CONVERSATIONS = envint("MAX_WATCHED_CONVERSATIONS", "20")
# Per socket: frames a client may send per second (with a burst), and how far the server may
# run ahead of what the client acknowledged before it drops a socket that is not reading.
FRAMES_PER_SECOND = envfloat("FRAMES_PER_SECOND", "20")
FRAME_BURST = envint("FRAME_BURST", "60")
MAX_UNACKED_CHARS = envint("MAX_UNACKED_CHARS", "2000000")
# What a socket's connection may hold unsent (bytes the client has not read) before the socket
# is closed: the bound on what a client can make the server buffer, whatever it acknowledges.
MAX_SOCKET_BUFFER_BYTES = envint("MAX_SOCKET_BUFFER_BYTES", str(8 * 1024 * 1024))
DEFAULT_MAX_TOKENS = envint("DEFAULT_MAX_TOKENS", "8192")
# Money. A monthly limit per user in USD (blank: no limit; admins override per user), and the
# markup that turns Chutes' catalogue prices into the prices charged when syncing the catalogue
# (Lava charges about 0.8% above Chutes).
MONTHLY_BUDGET_USD = envdecimal("MONTHLY_BUDGET_USD", "")
PRICE_MARKUP_PERCENT = envdecimal("PRICE_MARKUP_PERCENT", "0.8") or Decimal(0)
# Reconciliation reports a reply whose Lava cost differs from ours by more than this (USD).
RECONCILE_TOLERANCE_USD = envdecimal("RECONCILE_TOLERANCE_USD", "0.000001") or Decimal(0)
# Title new conversations from their first exchange with the same model (billed to the user).
AUTO_TITLES = envbool("AUTO_TITLES", "true")

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": os.getenv("LOG_LEVEL", "INFO")},
    "loggers": {
        # httpx logs every request URL at INFO; ours are logged by chat.upstream instead.
        "httpx": {"level": "WARNING"},
        "httpcore": {"level": "WARNING"},
    },
}

# Content-Security-Policy on every response (chat.middleware), first so that it also covers the
# static files WhiteNoise answers. No inline script or style anywhere: the chat page renders model
# output, and the policy is the second line of defence behind its sanitiser. Images only from
# this site or data: URLs, so a model cannot leak data through a markdown image's address.
MIDDLEWARE.insert(
    MIDDLEWARE.index("django.middleware.security.SecurityMiddleware") + 1,
    "chat.middleware.content_security_policy",
)
CONTENT_SECURITY_POLICY: dict[str, list[str]] = {
    "default-src": ["'self'"],
    "script-src": ["'self'"],
    "style-src": ["'self'"],
    "img-src": ["'self'", "data:"],
    "font-src": ["'self'"],
    "connect-src": ["'self'"],  # the middleware adds this host's ws:// or wss:// origin
    "object-src": ["'none'"],
    "base-uri": ["'none'"],
    "form-action": ["'self'"],
    "frame-ancestors": ["'none'"],
}
# Sources added for paths under a prefix. Django's admin needs nothing extra (its scripts are
# files and it sets no inline styles); kept empty so a relaxation has one obvious home.
CONTENT_SECURITY_POLICY_RELAXED: dict[str, dict[str, list[str]]] = {}
