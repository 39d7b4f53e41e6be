"""The WeChat callback as the common tutorials write it: Flask, a sha1 signature check over
the sorted token/timestamp/nonce, xmltodict, and WeChat's WXBizMsgCrypt algorithm written out
with pycryptodome for safe mode (docs/protocol.md). Echoes text messages as a passive reply.

Run under gunicorn by bench/compare.sh: `gunicorn flask_plain:app`. Environment: WX_TOKEN,
WX_AES_KEY (the 43-character EncodingAESKey), WX_APPID.
"""

import base64
import hashlib
import os
import random
import struct
import time

import xmltodict
from Crypto.Cipher import AES
from flask import Flask, Response, abort, request

TOKEN = os.environ.get("WX_TOKEN", "benchtoken")
AES_KEY = os.environ.get("WX_AES_KEY", "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG")
APPID = os.environ.get("WX_APPID", "wx0000000000bench")

TEXT_REPLY = (
    "<xml><ToUserName><![CDATA[{to}]]></ToUserName>"
    "<FromUserName><![CDATA[{sender}]]></FromUserName>"
    "<CreateTime>{time}</CreateTime>"
    "<MsgType><![CDATA[text]]></MsgType>"
    "<Content><![CDATA[{content}]]></Content></xml>"
)
ENCRYPTED_REPLY = (
    "<xml><Encrypt><![CDATA[{encrypt}]]></Encrypt>"
    "<MsgSignature><![CDATA[{signature}]]></MsgSignature>"
    "<TimeStamp>{timestamp}</TimeStamp>"
    "<Nonce><![CDATA[{nonce}]]></Nonce></xml>"
)


def sorted_sha1(*parts):
    return hashlib.sha1("".join(sorted(parts)).encode()).hexdigest()


class WXBizMsgCrypt:
    """AES-256-CBC, key = base64(EncodingAESKey + "="), IV = the key's first 16 bytes,
    PKCS#7 padding to 32; plaintext = 16 random bytes + 4-byte big-endian length + msg + appid."""

    def __init__(self, encoding_aes_key, appid):
        self.key = base64.b64decode(encoding_aes_key + "=")
        self.iv = self.key[:16]
        self.appid = appid.encode()

    def encrypt(self, msg):
        text = os.urandom(16) + struct.pack(">I", len(msg)) + msg + self.appid
        pad = 32 - len(text) % 32
        text += bytes([pad]) * pad
        cipher = AES.new(self.key, AES.MODE_CBC, self.iv)
        return base64.b64encode(cipher.encrypt(text)).decode()

    def decrypt(self, encrypted):
        cipher = AES.new(self.key, AES.MODE_CBC, self.iv)
        text = cipher.decrypt(base64.b64decode(encrypted))
        pad = text[-1]
        if not 1 <= pad <= 32:
            raise ValueError("bad padding")
        text = text[:-pad]
        (length,) = struct.unpack(">I", text[16:20])
        if text[20 + length :] != self.appid:
            raise ValueError("appid mismatch")
        return text[20 : 20 + length]


crypt = WXBizMsgCrypt(AES_KEY, APPID)
app = Flask(__name__)


@app.route("/wx/<account>", methods=["GET", "POST"])
def wechat(account):
    args = request.args
    timestamp = args.get("timestamp", "")
    nonce = args.get("nonce", "")
    if sorted_sha1(TOKEN, timestamp, nonce) != args.get("signature", ""):
        abort(403)
    if request.method == "GET":
        return args.get("echostr", "")

    safe = args.get("encrypt_type") == "aes"
    if safe:
        encrypted = xmltodict.parse(request.data)["xml"]["Encrypt"]
        if sorted_sha1(TOKEN, timestamp, nonce, encrypted) != args.get("msg_signature", ""):
            abort(403)
        try:
            xml = crypt.decrypt(encrypted)
        except ValueError:
            abort(400)
    else:
        xml = request.data
    msg = xmltodict.parse(xml)["xml"]
    if msg.get("MsgType") != "text":
        return "success"

    reply = TEXT_REPLY.format(
        to=msg["FromUserName"],
        sender=msg["ToUserName"],
        time=int(time.time()),
        content=msg["Content"],
    )
    if safe:
        reply_timestamp = str(int(time.time()))
        reply_nonce = str(random.randint(10**8, 10**9))
        encrypt = crypt.encrypt(reply.encode())
        reply = ENCRYPTED_REPLY.format(
            encrypt=encrypt,
            signature=sorted_sha1(TOKEN, reply_timestamp, reply_nonce, encrypt),
            timestamp=reply_timestamp,
            nonce=reply_nonce,
        )
    return Response(reply, content_type="application/xml")
