"""The script a user would write instead of driftsync: the benchmark's hand-written peer.

    python bench/peer.py URL QUERY_FILE EXPORT_GZ CONNECTION

Reads the mapping query's rows with psycopg (a server-side cursor, so that they stream) into a
dict, then reads Auth0's gzip NDJSON export line by line with `json`, and classifies every user
with the same rules driftsync applies on a first run (no baselines): NULL, absent and "" are no
value; emails and usernames compare case-insensitively; a name equal to the email, a nickname
equal to its local part and a Gravatar or Auth0 CDN picture are Auth0's generated defaults;
a missing boolean is false; metadata compares the legacy object's first-level keys as JSON
values. The direction of a difference comes from the legacy `updated_at` against Auth0's
`created_at` (legacy assumed without them), a cached profile's difference is refreshed at its
next login, and the migration marker `app_metadata.migrated` is the evidence for orphans.
Prints the summary as JSON, which the benchmark checks against the generator's expected mix.
"""

import gzip
import json
import sys
from datetime import datetime

import psycopg

TEXT = {"email", "name", "nickname", "given_name", "family_name", "picture", "username"}
BOOLEAN = {"email_verified", "blocked"}
OBJECT = {"user_metadata", "app_metadata"}
GENERATED_PICTURES = (
    "s.gravatar.com/avatar/",
    "secure.gravatar.com/avatar/",
    "www.gravatar.com/avatar/",
    "gravatar.com/avatar/",
    "cdn.auth0.com/avatars/",
)


def generated(field, value, emails):
    if field == "name":
        return any(value.lower() == email.lower() for email in emails)
    if field == "nickname":
        return any(value.lower() == email.split("@")[0].lower() for email in emails)
    if field == "picture":
        rest = value.split("://", 1)[-1]
        return rest.startswith(GENERATED_PICTURES)
    return False


def text(field, value, emails):
    if value is None or value == "" or generated(field, value, emails):
        return None
    return value.lower() if field in ("email", "username") else value


def differs(fields, legacy, auth0):
    emails = [e for e in (legacy.get("email"), auth0.get("email")) if e]
    for field in fields:
        if field in TEXT:
            if text(field, legacy.get(field), emails) != text(field, auth0.get(field), emails):
                return True
        elif field in BOOLEAN:
            if bool(legacy.get(field)) != bool(auth0.get(field)):
                return True
        elif field in OBJECT:
            mine = legacy.get(field) or {}
            theirs = auth0.get(field) or {}
            for key, value in mine.items():
                if value != theirs.get(key):
                    return True
    return False


def main():
    url, query_file, export, connection = sys.argv[1:5]
    query = open(query_file).read()
    legacy = {}
    with psycopg.connect(url) as db:
        db.read_only = True
        with db.cursor(name="rows") as cursor:
            cursor.itersize = 10_000
            cursor.execute(query)
            names = None
            for row in cursor:
                if names is None:
                    names = [column.name for column in cursor.description]
                legacy[row[0]] = dict(zip(names, row))
    fields = [name for name in names or [] if name not in ("user_id", "updated_at")]
    summary = dict.fromkeys(
        ["legacy_users", "auth0_users", "in_sync", "stranded", "auth0_ahead", "conflict",
         "stale_cache", "not_migrated", "orphaned", "deleted_in_auth0", "auth0_only",
         "pushed", "push_failed"],
        0,
    )
    summary["legacy_users"] = len(legacy)
    with gzip.open(export, "rt", encoding="utf-8") as lines:
        for line in lines:
            if not line.strip():
                continue
            user = json.loads(line)
            identities = user.get("identities") or [{}]
            if identities[0].get("connection", user.get("connection")) != connection:
                continue
            user_id = user["user_id"]
            if not user_id.startswith("auth0|"):
                continue
            summary["auth0_users"] += 1
            migrated = (user.get("app_metadata") or {}).get("migrated") is True
            row = legacy.pop(user_id[len("auth0|"):], None)
            if row is None:
                summary["orphaned" if migrated else "auth0_only"] += 1
            elif not differs(fields, row, user):
                summary["in_sync"] += 1
            elif not migrated:
                summary["stale_cache"] += 1
            else:
                changed, created = row.get("updated_at"), user.get("created_at")
                if changed is not None and created is not None:
                    created = datetime.fromisoformat(created.replace("Z", "+00:00"))
                    summary["stranded" if changed > created else "auth0_ahead"] += 1
                else:
                    summary["stranded"] += 1
    summary["not_migrated"] = len(legacy)
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
