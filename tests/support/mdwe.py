"""Run a command under the seccomp filter systemd 252 installs for ``MemoryDenyWriteExecute=yes``.

``python tests/support/mdwe.py COMMAND...`` installs the filter and execs COMMAND, which
inherits it. Like systemd's (``seccomp_memory_deny_write_execute`` in its
``seccomp-util.c``) it makes these calls fail with EPERM: ``mmap`` with both PROT_WRITE and
PROT_EXEC, ``mprotect`` and ``pkey_mprotect`` with PROT_EXEC, and ``shmat`` with SHM_EXEC.
So a process that runs here runs in the unit, as far as this setting goes. Standard library
only: the filter is a classic BPF program handed to ``prctl(PR_SET_SECCOMP)`` through ctypes.
"""

from __future__ import annotations

import ctypes
import os
import platform
import struct
import sys

PR_SET_NO_NEW_PRIVS = 38
PR_SET_SECCOMP = 22
SECCOMP_MODE_FILTER = 2
SECCOMP_RET_ALLOW = 0x7FFF0000
SECCOMP_RET_ERRNO = 0x00050000
EPERM = 1
PROT_WRITE, PROT_EXEC = 0x2, 0x4
SHM_EXEC = 0o100000

# audit architecture and the numbers of mmap, mprotect, pkey_mprotect, shmat
ARCHES = {
    "x86_64": (0xC000003E, 9, 10, 329, 30),
    "aarch64": (0xC00000B7, 222, 226, 288, 196),
}

# classic BPF opcodes
_LD_W_ABS = 0x20  # BPF_LD | BPF_W | BPF_ABS
_JEQ_K = 0x15  # BPF_JMP | BPF_JEQ | BPF_K
_AND_K = 0x54  # BPF_ALU | BPF_AND | BPF_K
_RET_K = 0x06  # BPF_RET | BPF_K
# offsets in struct seccomp_data: nr, arch, then args[] from 16; the low word of args[2]
_NR, _ARCH, _ARG2_LOW = 0, 4, 32 if sys.byteorder == "little" else 36


def supported() -> bool:
    """Whether this machine's architecture is one the filter knows."""
    return sys.platform == "linux" and platform.machine() in ARCHES


def _program() -> list[tuple[int, int, int, int]]:
    arch, mmap, mprotect, pkey_mprotect, shmat = ARCHES[platform.machine()]
    allow = (_RET_K, 0, 0, SECCOMP_RET_ALLOW)
    deny = (_RET_K, 0, 0, SECCOMP_RET_ERRNO | EPERM)

    def refuse_when(mask: int) -> list[tuple[int, int, int, int]]:
        # A = args[2] & mask; deny when A == mask
        return [(_LD_W_ABS, 0, 0, _ARG2_LOW), (_AND_K, 0, 0, mask), (_JEQ_K, 0, 1, mask),
                deny, allow]

    mmap_check = refuse_when(PROT_WRITE | PROT_EXEC)
    mprotect_check = refuse_when(PROT_EXEC)
    shmat_check = refuse_when(SHM_EXEC)
    # dispatch: four comparisons, then allow; each jumps to its check block below
    head_len = 8
    to_mmap = head_len - 3  # from instruction 3 (the first jeq) to the mmap block
    program = [
        (_LD_W_ABS, 0, 0, _ARCH),
        (_JEQ_K, 1, 0, arch),
        allow,  # another ABI (x32...): not ours to judge
        (_LD_W_ABS, 0, 0, _NR),
        (_JEQ_K, to_mmap - 1, 0, mmap),
        (_JEQ_K, to_mmap - 2 + len(mmap_check), 0, mprotect),
        (_JEQ_K, to_mmap - 3 + len(mmap_check), 0, pkey_mprotect),
        (_JEQ_K, to_mmap - 4 + len(mmap_check) + len(mprotect_check), 0, shmat),
    ]
    assert len(program) == head_len
    return [*program, allow, *mmap_check, *mprotect_check, *shmat_check]


def install() -> None:
    """Install the filter on this process (and what it execs); raises OSError if refused."""
    program = _program()
    filters = b"".join(struct.pack("HBBI", *insn) for insn in program)
    buffer = ctypes.create_string_buffer(filters, len(filters))

    class SockFprog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]

    fprog = SockFprog(len(program), ctypes.addressof(buffer))
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_NO_NEW_PRIVS)")
    if libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.byref(fprog), 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_SECCOMP)")


def main(argv: list[str]) -> None:
    if not argv:
        sys.exit("usage: python tests/support/mdwe.py COMMAND [ARG...]")
    install()
    os.execvp(argv[0], argv)


if __name__ == "__main__":
    main(sys.argv[1:])
