"""A worker joining again as itself: the proof that it holds its old credential.

The pool stores a worker's credential only as its sha256. A worker pointed at its pool under a new
address (another port, another name for the host) cannot know it is the same pool, so it must not
send the credential there. It registers with a join token instead, naming its old id with a proof:
sha256 of the stored form of the credential, bound to that join token. The pool that issued the
credential can check it from what it stores; any other pool learns nothing it could reuse.
"""

from __future__ import annotations

import hashlib
import hmac


def credential_hash(credential: str) -> str:
    """The stored form of a credential (tokens are high-entropy: a plain sha256 is enough)."""
    return hashlib.sha256(credential.encode()).hexdigest()


def proof_from_hash(stored_hash: str, join_token: str) -> str:
    return hashlib.sha256(f"hivemind-rejoin:{stored_hash}:{join_token}".encode()).hexdigest()


def rejoin_proof(credential: str, join_token: str) -> str:
    """What the worker sends: computed from the credential it holds."""
    return proof_from_hash(credential_hash(credential), join_token)


def proof_matches(stored_hash: str, join_token: str, proof: str) -> bool:
    """What the pool checks, from the hash it stores (in constant time)."""
    return hmac.compare_digest(proof_from_hash(stored_hash, join_token), proof)
