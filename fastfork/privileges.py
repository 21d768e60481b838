"""--user/--group: the primary binds as root, workers drop to the user before user code."""

import grp
import os
import pwd


def resolve_credentials(user=None, group=None):
    """``(uid, gid, username)`` for ``--user``/``--group`` (names or numbers).

    The group defaults to the user's primary group.  Raises ValueError naming
    an unknown user or group.
    """
    uid = gid = username = None
    if user is not None:
        try:
            entry = pwd.getpwuid(int(user)) if str(user).isdigit() else pwd.getpwnam(str(user))
        except KeyError:
            raise ValueError(f"no such user: {user!r}") from None
        uid, gid, username = entry.pw_uid, entry.pw_gid, entry.pw_name
    if group is not None:
        try:
            gid = (grp.getgrgid(int(group)) if str(group).isdigit()
                   else grp.getgrnam(str(group))).gr_gid
        except KeyError:
            raise ValueError(f"no such group: {group!r}") from None
    return uid, gid, username


def drop_privileges(uid, gid, username=None):
    """In a worker, before user code: become ``uid``/``gid`` for good."""
    if gid is not None:
        if username is not None:
            os.initgroups(username, gid)
        else:
            os.setgroups([gid])
        os.setgid(gid)
    if uid is not None:
        os.setuid(uid)
