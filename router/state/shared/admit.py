"""The admission on Redis as bytes: ``scripts.ADMIT``'s EVALSHA, and its answer read.

Both run on every request of a key with limits, so they are written for it: a key's
unchanging part (its key names and limits) is encoded once a day, a request adds its
binding key, tokens and slot id in one format; the answer is one string, split once,
the key's x-ratelimit-* header lines already written by the script. Settlements the
admission carries (``writer.Writer.carry``) are encoded into the same command.
"""

from __future__ import annotations

from router.state.shared import Admission, Quota, budget_windows, key_base
from router.state.shared.batch import TTLS, Encoder, Settlement
from router.state.shared.resp import bulk

_NO_BINDING = b"$0\r\n\r\n"
_new = object.__new__


class AdmitCodec:
    def __init__(self, prefix: str, lease_s: float, encoder: Encoder) -> None:
        self.prefix = prefix
        self.lease_s = lease_s
        self.encoder = encoder
        self.sha = b""
        self._sha = b""  # the sha as a bulk string
        self._head = b""
        # name -> (quota, valid until, day, month, its KEYS 2-6, its ARGV 1-8)
        self._static: dict[str, tuple[Quota, float, str, str, bytes, bytes]] = {}

    def loaded(self, sha: bytes) -> None:
        self.sha = sha
        self._sha = bulk(sha)
        # EVALSHA, the script, 6 keys, then 12 arguments: 21 elements in all.
        self._head = b"*21\r\n$7\r\nEVALSHA\r\n" + self._sha + b"$1\r\n6\r\n"

    def _encode(self, quota: Quota, now: float) -> tuple[Quota, float, str, str, bytes, bytes]:
        """A key's unchanging KEYS and ARGV, until the UTC day ends (its spend keys)."""
        if len(self._static) > 4096:  # keys of configs reloaded away
            self._static.clear()
        day, day_end, month, month_end = budget_windows(now)
        p = key_base(self.prefix, quota.name)
        keys = (p + "r", p + "t", p + "c", f"{p}d:{day}", f"{p}m:{month}")
        args = (
            -1 if quota.rpm is None else quota.rpm,
            -1 if quota.tpm is None else quota.tpm,
            -1 if quota.concurrent is None else quota.concurrent,
            -1 if quota.day_usd is None else quota.day_usd,
            -1 if quota.month_usd is None else quota.month_usd,
            self.lease_s,
            day_end,
            month_end,
        )
        static = (
            quota,
            day_end,
            day,
            month,
            b"".join(bulk(k) for k in keys),
            b"".join(bulk(a) for a in args),
        )
        self._static[quota.name] = static
        return static

    def command(
        self,
        quota: Quota,
        tokens: int,
        binding_key: str | None,
        lease: str,
        now: float,
        carried: list[Settlement] | None = None,
        ask: bytes = b"-",
    ) -> bytes:
        static = self._static.get(quota.name)
        if static is None or static[0] is not quota or now >= static[1]:
            static = self._encode(quota, now)
        if binding_key is None:
            binding, flag = _NO_BINDING, b"0"
        else:
            key = (self.prefix + "b:" + binding_key).encode()
            binding, flag = b"$%d\r\n%b\r\n" % (len(key), key), b"1"
        tok = b"%d" % tokens
        slot = lease.encode()
        tail = b"$%d\r\n%b\r\n$%d\r\n%b\r\n$1\r\n%b\r\n$%d\r\n%b\r\n" % (
            len(tok), tok, len(slot), slot, flag, len(ask), ask
        )  # fmt: skip
        if not carried:
            return b"".join((self._head, binding, static[4], static[5], tail))
        n = len(carried)
        keys, args = self.encoder.settle_parts(carried, static[2], static[3])
        head = b"*%d\r\n$7\r\nEVALSHA\r\n%b$%d\r\n%d\r\n" % (
            23 + 5 * n,
            self._sha,
            len(str(6 + 4 * n)),
            6 + 4 * n,
        )
        return b"".join((head, binding, static[4], keys, static[5], tail, args, TTLS))

    @staticmethod
    def answer(reply: bytes, quota: Quota, lease: str) -> Admission:
        """``scripts.ADMIT``'s answer: ok, code, limit, retry ms, tokens reserved, the
        allowance granted (``now,requests' and tokens' arrival times`` or ``-``), the
        size of the header lines that follow, then ``=binding`` or ``-``."""
        ok, code, limit, retry_ms, reserved, granted, size, rest = reply.decode().split(" ", 7)
        out = _new(Admission)  # no __init__ call: every request makes one
        out.quota = quota
        if ok == "1":
            if lease:
                out.lease = lease
            if reserved != "0":
                out.reserved = int(reserved)
        else:
            out.admitted = False
            out.code = code
            out.limit = limit
            out.retry_after_s = int(retry_ms) / 1000.0
        if size != "0":
            n = int(size)
            out.rate = rest[:n]
            rest = rest[n:]
        if rest[0] == "=":
            out.binding = rest[1:]
        if granted != "-":
            out.granted = granted
        return out
