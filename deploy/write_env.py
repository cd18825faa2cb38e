"""Write an env file from its example with fresh random secrets: `.env` for docker compose
(`make docker-up` runs it once) and the Kubernetes dev overlay's `secrets.env`
(`make k8s-dev-secrets`).

The example's placeholders are published with the repository, and the controller, worker and
agent refuse them with DEBUG off; every secret here is made anew instead. A value may name a
fresh secret as `${NAME}` (the dev overlay's DATABASE_URL and REDIS_URL carry the PostgreSQL and
Redis passwords).
Standard library only, so it runs before any virtualenv exists.
"""

import os
import secrets
import sys

# Each secret and the length of its random value (bytes before URL-safe base64).
FRESH = {
    "SECRET_KEY": 50,
    "INTERNAL_KEY": 32,
    "POSTGRES_PASSWORD": 24,
    "REDIS_PASSWORD": 24,
    "ADMIN_PASSWORD": 18,
}


def render(example: str) -> str:
    fresh = {name: secrets.token_urlsafe(size) for name, size in FRESH.items()}
    lines = []
    for line in example.splitlines():
        name, sep, _ = line.partition("=")
        if sep and not line.lstrip().startswith("#"):
            if name.strip() in FRESH:
                line = f"{name.strip()}={fresh[name.strip()]}"
            for secret, value in fresh.items():
                line = line.replace(f"${{{secret}}}", value)
        lines.append(line)
    return "\n".join(lines) + "\n"


def main(source: str, target: str) -> int:
    with open(source) as file:
        text = render(file.read())
    # 0600 from the moment it exists: it holds every secret of the deployment.
    descriptor = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w") as file:
        file.write(text)
    print(f"Wrote {target} with fresh random secrets ({', '.join(FRESH)}).")
    return 0


if __name__ == "__main__":
    sys.exit(main(*(sys.argv[1:3] or [".env.example", ".env"])))
