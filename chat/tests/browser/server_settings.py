"""Settings of the server the browser tests start: the real ones, with a fast password hasher.

Every browser test signs up its own user through the page; the production hasher's deliberate
slowness would be most of the suite's time. Never use this module outside the tests.
"""

from chutesweb.settings import *  # noqa: F403

PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
