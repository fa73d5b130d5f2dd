"""The vault: secrets sealed with AES-256-GCM under a key ring of data keys.

Each secret is sealed with the ring's newest data key; each data key is stored wrapped under the
master key (``TERRACE_MASTER_KEY`` or ``$TERRACE_HOME/master.key``). Rotation adds a data key and
re-seals every secret; an old key still opens what it sealed until it is retired.
"""

from terrace.vault.crypto import MasterKey, load_master_key
from terrace.vault.service import SecretInfo, SecretRef, Vault, VaultKeyInfo

__all__ = [
    "MasterKey",
    "SecretInfo",
    "SecretRef",
    "Vault",
    "VaultKeyInfo",
    "load_master_key",
]
