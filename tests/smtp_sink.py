"""An SMTP sink for greenlight's notification tests, run by Debian's aiosmtpd:

    PYTHONPATH=tests python3 -m aiosmtpd -n -l 127.0.0.1:PORT -c smtp_sink.Sink OUT_DIR [REFUSE_FIRST [REPLY]]

Each accepted message is written to OUT_DIR as NNNN.json (atomically): the
envelope, the headers, and the decoded text and HTML parts. The first
REFUSE_FIRST messages are refused with REPLY (default a transient
"451 4.3.0 try again later") and recorded as NNNN.refused.
"""

import email
import json
import os
from email import policy


class Sink:
    def __init__(self, out_dir, refuse_first="0", reply="451 4.3.0 try again later"):
        self.out_dir = out_dir
        self.refuse_first = int(refuse_first)
        self.reply = reply
        self.seen = 0
        os.makedirs(out_dir, exist_ok=True)

    @classmethod
    def from_cli(cls, parser, *args):
        if not 1 <= len(args) <= 3:
            parser.error("usage: -c smtp_sink.Sink OUT_DIR [REFUSE_FIRST [REPLY]]")
        return cls(*args)

    def _write(self, name, data):
        tmp = os.path.join(self.out_dir, "." + name + ".tmp")
        with open(tmp, "w") as f:
            f.write(data)
        os.rename(tmp, os.path.join(self.out_dir, name))

    async def handle_DATA(self, server, session, envelope):
        self.seen += 1
        n = self.seen
        if n <= self.refuse_first:
            self._write("%04d.refused" % n, self.reply)
            return self.reply
        msg = email.message_from_bytes(envelope.content, policy=policy.default)
        text = msg.get_body(preferencelist=("plain",))
        html = msg.get_body(preferencelist=("html",))
        record = {
            "mail_from": envelope.mail_from,
            "rcpt_tos": list(envelope.rcpt_tos),
            "subject": str(msg["subject"]),
            "from": str(msg["from"]),
            "to": str(msg["to"]),
            "content_type": msg.get_content_type(),
            "text": text.get_content() if text is not None else None,
            "html": html.get_content() if html is not None else None,
            "tls": session.ssl is not None,
        }
        self._write("%04d.json" % n, json.dumps(record))
        return "250 OK"
