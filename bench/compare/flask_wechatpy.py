"""The WeChat callback with wechatpy in Flask, as wechatpy's own echo example writes it:
check_signature, parse_message, create_reply, and WeChatCrypto in safe mode. Echoes text
messages as a passive reply.

Run under gunicorn by bench/compare.sh: `gunicorn flask_wechatpy:app`. Environment: WX_TOKEN,
WX_AES_KEY (the 43-character EncodingAESKey), WX_APPID.
"""

import os

from flask import Flask, Response, abort, request
from wechatpy import create_reply, parse_message
from wechatpy.crypto import WeChatCrypto
from wechatpy.exceptions import InvalidAppIdException, InvalidSignatureException
from wechatpy.utils import check_signature

TOKEN = os.environ.get("WX_TOKEN", "benchtoken")
AES_KEY = os.environ.get("WX_AES_KEY", "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG")
APPID = os.environ.get("WX_APPID", "wx0000000000bench")

crypto = WeChatCrypto(TOKEN, AES_KEY, APPID)
app = Flask(__name__)


@app.route("/wx/<account>", methods=["GET", "POST"])
def wechat(account):
    args = request.args
    timestamp = args.get("timestamp", "")
    nonce = args.get("nonce", "")
    try:
        check_signature(TOKEN, args.get("signature", ""), timestamp, nonce)
    except InvalidSignatureException:
        abort(403)
    if request.method == "GET":
        return args.get("echostr", "")

    if args.get("encrypt_type") == "aes":
        try:
            xml = crypto.decrypt_message(
                request.data, args.get("msg_signature", ""), timestamp, nonce
            )
        except (InvalidSignatureException, InvalidAppIdException):
            abort(403)
        msg = parse_message(xml)
        if msg.type != "text":
            return "success"
        reply = create_reply(msg.content, msg)
        body = crypto.encrypt_message(reply.render(), nonce, timestamp)
    else:
        msg = parse_message(request.data)
        if msg.type != "text":
            return "success"
        body = create_reply(msg.content, msg).render()
    return Response(body, content_type="application/xml")
