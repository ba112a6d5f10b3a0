"""Secure aggregation (Bonawitz et al. 2017, "Practical Secure Aggregation for Federated
Learning on User-Held Data"): the server learns the sum of the round's updates and nothing
else, even when clients drop out after masking.

Per round, for the sampled clients 0..n-1 (in client order):

1. *Advertise*: client i has an X25519 key pair (sk_i, pk_i) and a self-mask seed b_i.
2. *Share*: client i splits sk_i and b_i into n Shamir shares over GF(2^127 - 1), threshold
   t (any t of them rebuild the secret, fewer reveal nothing), one of each per client.
3. *Masked input*: client i quantises its update to fixed point (`frac_bits` fractional
   bits, two's complement in uint64: arithmetic mod 2^64) and sends
       y_i = x_i + PRG(b_i) + sum_{j > i} PRG(s_ij) - sum_{j < i} PRG(s_ij)   (mod 2^64)
   where s_ij = HKDF(X25519(sk_i, pk_j)) is the key i and j agree on, and PRG is AES-256 in
   counter mode. Alone, y_i is uniform mod 2^64 whatever x_i is.
4. *Unmask*: the server sums the y_i it received (the survivors), asks the survivors for
   their shares: of b_i for every survivor (to remove the self-masks) and of sk_j for every
   client that dropped after step 2 (to recompute and remove the pairwise masks the
   survivors added for it). With fewer than t survivors the round is aborted.

The cryptography comes from the `cryptography` package (`pip install hpcml[secagg]`).
In this simulation the key pairs and seeds derive from (seed, round, client) through HKDF,
so a run is reproducible and independent of the rank count; a deployment draws them from
os.urandom on each client.
"""
import numpy as np

PRIME = (1 << 127) - 1  # Shamir's field (a Mersenne prime)
CHUNK = 15  # secret bytes per field element (120 bits < 127)


def _crypto():
    try:
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import x25519
        from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
        from cryptography.hazmat.primitives.kdf.hkdf import HKDF
    except ImportError:
        raise RuntimeError("secure aggregation needs the `cryptography` package: "
                           "pip install 'hpcml[secagg]'") from None
    return hashes, x25519, Cipher, algorithms, modes, HKDF


def _hkdf(material, info, length=32):
    hashes, _, _, _, _, HKDF = _crypto()
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=None,
                info=info).derive(material)


def prg(key, n):
    """n uint64 from AES-256-CTR keyed by the 32-byte `key` (a zero nonce: every key is
    used for one vector)."""
    _, _, Cipher, algorithms, modes, _ = _crypto()
    enc = Cipher(algorithms.AES(key), modes.CTR(b"\0" * 16)).encryptor()
    return np.frombuffer(enc.update(b"\0" * (8 * n)) + enc.finalize(), "<u8").copy()


def quantize(x, frac_bits):
    """float -> fixed point, two's complement in uint64 (sums wrap mod 2^64)."""
    return np.round(np.asarray(x, np.float64) * 2.0 ** frac_bits).astype(np.int64) \
        .view(np.uint64)


def dequantize(q, frac_bits):
    return np.asarray(q, np.uint64).view(np.int64).astype(np.float64) / 2.0 ** frac_bits


# --- Shamir secret sharing over GF(PRIME) ---------------------------------------------------
def share(secret, n, t, key):
    """n shares (x = 1..n) of the bytes `secret`, threshold t; the polynomials' random
    coefficients from the 32-byte `key` (a simulation's determinism)."""
    chunks = [int.from_bytes(secret[k:k + CHUNK], "big")
              for k in range(0, len(secret), CHUNK)]
    stream = prg(key, 2 * len(chunks) * max(t - 1, 1))
    coef = [[c] + [(int(stream[2 * (a * (t - 1) + b)]) << 64 |
                    int(stream[2 * (a * (t - 1) + b) + 1])) % PRIME for b in range(t - 1)]
            for a, c in enumerate(chunks)]
    return [(x, [_poly(cs, x) for cs in coef]) for x in range(1, n + 1)]


def _poly(cs, x):
    out = 0
    for c in reversed(cs):
        out = (out * x + c) % PRIME
    return out


def reconstruct(shares, t, length):
    """The secret (`length` bytes) from at least t shares [(x, [y per chunk])]."""
    if len(shares) < t:
        raise ValueError(f"secure aggregation: {len(shares)} shares, the threshold is {t}")
    pts = shares[:t]
    out = b""
    for k in range(len(pts[0][1])):
        s = 0
        for i, (xi, ys) in enumerate(pts):
            num = den = 1
            for j, (xj, _) in enumerate(pts):
                if j != i:
                    num = num * (-xj) % PRIME
                    den = den * (xi - xj) % PRIME
            s = (s + ys[k] * num * pow(den, PRIME - 2, PRIME)) % PRIME
        size = min(CHUNK, length - k * CHUNK)
        out += s.to_bytes(size, "big")
    return out


# --- the protocol's parties -------------------------------------------------------------------
class SecAggClient:
    """Client `i` (its position in the round) of a round; its secrets from `root`, 32
    bytes the simulation derives from (seed, round, client)."""

    def __init__(self, position, client, root):
        _, x25519, _, _, _, _ = _crypto()
        self.i, self.client = position, client
        self.sk_bytes = _hkdf(root, b"hpcml-secagg sk")
        self.sk = x25519.X25519PrivateKey.from_private_bytes(self.sk_bytes)
        from cryptography.hazmat.primitives import serialization as ser
        self.pk = self.sk.public_key().public_bytes(ser.Encoding.Raw, ser.PublicFormat.Raw)
        self.b = _hkdf(root, b"hpcml-secagg self-mask")
        self._share_key = _hkdf(root, b"hpcml-secagg shares")

    def shares(self, n, t):
        """{"sk": n shares of sk_i, "b": n shares of b_i}: share x goes to position x-1."""
        return {"sk": share(self.sk_bytes, n, t, _hkdf(self._share_key, b"sk")),
                "b": share(self.b, n, t, _hkdf(self._share_key, b"b"))}

    def masked(self, x, pks):
        """y_i (uint64) for the quantised update x (uint64) and every position's public
        key `pks` (bytes, position order)."""
        y = x + prg(self.b, len(x))
        for j, pk in enumerate(pks):
            if j != self.i:
                m = prg(pair_key(self.sk, pk, self.i, j), len(x))
                y = y + m if j > self.i else y - m
        return y


def pair_key(sk, peer_pk, i, j):
    """s_ij: HKDF of the X25519 shared secret, bound to the (unordered) pair."""
    _, x25519, _, _, _, _ = _crypto()
    shared = sk.exchange(x25519.X25519PublicKey.from_public_bytes(peer_pk))
    lo, hi = min(i, j), max(i, j)
    return _hkdf(shared, b"hpcml-secagg pair %d %d" % (lo, hi))


def unmask(total, n, survivors, pks, shares, t):
    """The sum of the survivors' quantised updates from `total` (the sum of their y_i):
    their self-masks removed (b_i rebuilt from survivors' shares) and the pairwise masks
    they added for the clients that dropped (sk_j rebuilt likewise). shares[i] is client
    i's {"sk": [...], "b": [...]}; only survivors' shares are read."""
    _, x25519, _, _, _, _ = _crypto()
    alive = sorted(survivors)
    if len(alive) < t:
        raise ValueError(f"secure aggregation: {len(alive)} of {n} clients survived, the "
                         f"threshold is {t}: the round is aborted")
    held = lambda who, kind: [shares[who][kind][x] for x in alive]  # noqa: E731
    out = total.copy()
    for i in alive:
        out -= prg(reconstruct(held(i, "b"), t, 32), len(out))
    for j in sorted(set(range(n)) - set(alive)):
        sk_j = x25519.X25519PrivateKey.from_private_bytes(reconstruct(held(j, "sk"), t, 32))
        for i in alive:
            m = prg(pair_key(sk_j, pks[i], j, i), len(out))
            out = out - m if j > i else out + m  # survivor i added +m for j > i, -m for j < i
    return out
