"""The WeChat callback with WeRoBot: its own WSGI app (bottle) and an `@robot.text` echo.
Safe mode comes from encoding_aes_key and app_id (WeRoBot decrypts a body with <Encrypt> and
encrypts its replies once it has decrypted one; bench/compare.sh starts a fresh server per mode).
Sessions are off (SESSION_STORAGE=False): WeRoBot's default keeps one in SQLite per sender,
which would be work the other servers do not do.

Run under gunicorn by bench/compare.sh: `gunicorn werobot_app:app`. Environment: WX_TOKEN,
WX_AES_KEY (the 43-character EncodingAESKey), WX_APPID.
"""

import os

from werobot import WeRoBot

robot = WeRoBot(
    token=os.environ.get("WX_TOKEN", "benchtoken"),
    encoding_aes_key=os.environ.get(
        "WX_AES_KEY", "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG"
    ),
    app_id=os.environ.get("WX_APPID", "wx0000000000bench"),
)
robot.config["SESSION_STORAGE"] = False


@robot.text
def echo(message):
    return message.content


app = robot.wsgi
