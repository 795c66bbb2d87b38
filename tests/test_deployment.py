"""What users deploy, run the way docker-compose.yml runs it, driven by a browser.

The test reads docker-compose.yml and runs its services' commands as written: ``migrate`` (which
bootstraps the first admin), ``model-init``, ``web`` (gunicorn, production settings), ``worker``
(queue default + beat), ``gpu-worker`` and the ``proxy`` (Caddy with deploy/Caddyfile, TLS from
its internal CA), after collecting the static files as the Dockerfile does. Only addresses,
ports and paths differ from the containers. The web image's services run from ``RLHF_WEB_VENV``
(``make web-env``: the runtime lock plus the wheel built from this tree, without torch) in a
scratch directory, so nothing comes from the checkout and any import of torch on the web side
fails loudly; the trainer's services run from the test environment (it has torch).

On PostgreSQL and Redis when ``DATABASE_URL`` and ``REDIS_URL`` are set (CI), each in a
database of its own; otherwise on SQLite and the embedded broker.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse, urlunparse

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
COMPOSE = yaml.safe_load((REPO / "docker-compose.yml").read_text())
SERVICES = COMPOSE["services"]
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
ADMIN = ("root", "Deploy-" + secrets.token_hex(8))
LABELLERS = {"alice": "demo-alice", "bob": "demo-bob"}  # from load_demo

pytestmark = [pytest.mark.browser, pytest.mark.celery_worker, pytest.mark.slow]


def _require(condition: bool, reason: str) -> None:
    """Skip outside ``make test`` (which provides all of these); fail in CI, where a skip would
    hide that the deployment was never tested."""
    if not condition:
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def lan_address() -> str | None:
    """This machine's address on its network (not loopback), where a colleague would reach it."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.123", 9))  # no packet is sent: this only picks a route
        except OSError:
            return None
        address = probe.getsockname()[0]
    return None if address.startswith("127.") else address


_VARIABLE = re.compile(r"\$\{(\w+)(?:(:?[-?])([^}]*))?\}")


def interpolate(value: str, variables: dict[str, str]) -> str:
    """Compose's ``${NAME}``, ``${NAME:-default}`` and ``${NAME:?message}`` with ``variables``
    as the .env file."""

    def one(match: re.Match) -> str:
        name, operator, argument = match.groups()
        if name in variables:
            return variables[name]
        assert not (operator or "").endswith("?"), f"compose needs {name}: {argument}"
        return argument if (operator or "").endswith("-") else ""

    return _VARIABLE.sub(one, value)


def compose_environment(service: str, variables: dict[str, str]) -> dict[str, str]:
    environment = SERVICES[service].get("environment", {})
    return {key: interpolate(str(value), variables) for key, value in environment.items()}


def compose_command(service: str) -> list[str]:
    command = SERVICES[service]["command"]
    assert isinstance(command, list), f"{service}: commands are lists in docker-compose.yml"
    return [str(part) for part in command]


def compose_healthcheck(service: str) -> list[str]:
    """The health check as the container runs it: CMD as is, CMD-SHELL through sh, with
    compose's ``$$`` escape turned into the ``$`` the container's shell sees."""
    kind, *rest = SERVICES[service]["healthcheck"]["test"]
    if kind == "CMD-SHELL":
        return ["sh", "-c", rest[0].replace("$$", "$")]
    assert kind == "CMD"
    return rest


@dataclass
class Stack:
    root: Path
    web_env: dict[str, str]
    trainer_env: dict[str, str]
    port: int
    https_port: int
    lan: str | None
    processes: dict[str, subprocess.Popen] = field(default_factory=dict)

    @property
    def https_url(self) -> str:
        return f"https://127.0.0.1:{self.https_port}"

    def run(self, command: list[str], env: dict[str, str], timeout: float = 300):
        result = subprocess.run(
            command, env=env, cwd=self.root, capture_output=True, text=True, timeout=timeout
        )
        assert result.returncode == 0, f"{command} failed:\n{result.stdout}\n{result.stderr}"
        return result

    def start(self, name: str, command: list[str], env: dict[str, str]) -> None:
        log = (self.root / f"{name}.log").open("w")
        self.processes[name] = subprocess.Popen(
            command,
            env=env,
            cwd=self.root,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def log(self, name: str) -> str:
        return (self.root / f"{name}.log").read_text(errors="replace")[-4000:]

    def wait_until(self, name: str, check, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.processes[name].poll() is not None:
                pytest.fail(
                    f"{name} exited with {self.processes[name].returncode}:\n{self.log(name)}"
                )
            if check():
                return
            time.sleep(0.5)
        pytest.fail(f"{name} was not ready within {timeout:.0f} s:\n{self.log(name)}")

    def healthy(self, service: str, env: dict[str, str]) -> bool:
        result = subprocess.run(
            compose_healthcheck(service), env=env, cwd=self.root, capture_output=True, timeout=60
        )
        return result.returncode == 0

    def stop(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        for process in self.processes.values():
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)


def _database(root: Path):
    """A database of the stack's own: a fresh PostgreSQL database next to the test one, or a
    SQLite file. Returns (url, drop)."""
    base = os.environ.get("DATABASE_URL")
    if not base:
        return f"sqlite://{root / 'db.sqlite3'}", lambda: None
    import psycopg

    name = f"rlhf_deploy_{os.getpid()}"
    admin_url = urlunparse(urlparse(base)._replace(path="/postgres", query=""))
    with psycopg.connect(admin_url, autocommit=True) as connection:
        connection.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        connection.execute(f"CREATE DATABASE {name}")

    def drop() -> None:
        with psycopg.connect(admin_url, autocommit=True) as connection:
            connection.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")

    return urlunparse(urlparse(base)._replace(path=f"/{name}")), drop


def _redis() -> str:
    """Redis database 11, emptied (the other tests use 0); '' for the embedded broker."""
    base = os.environ.get("REDIS_URL")
    if not base:
        return ""
    import redis

    url = urlunparse(urlparse(base)._replace(path="/11"))
    redis.Redis.from_url(url).flushdb()
    return url


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    web_venv = Path(os.environ.get("RLHF_WEB_VENV", "/nonexistent"))
    _require((web_venv / "bin" / "rlhf-annotate").exists(), "RLHF_WEB_VENV: run `make test`")
    _require(CHROMIUM.exists() and shutil.which("caddy") is not None, "needs chromium and caddy")
    root = tmp_path_factory.mktemp("deploy")
    database_url, drop_database = _database(root)
    port, https_port, lan = free_port(), free_port(), lan_address()

    # The host's .env, as an operator would write it; then what differs outside containers.
    dotenv = {
        "DJANGO_SECRET_KEY": secrets.token_urlsafe(50),
        "DJANGO_ALLOWED_HOSTS": ",".join(["localhost", "127.0.0.1", *([lan] if lan else [])]),
        "DJANGO_ADMIN_USERNAME": ADMIN[0],
        "DJANGO_ADMIN_PASSWORD": ADMIN[1],
    }
    outside_containers = {
        "DATABASE_URL": database_url,
        "REDIS_URL": _redis(),
        "DJANGO_TRUSTED_PROXIES": "127.0.0.1",  # Caddy runs beside gunicorn here
        "RLHF_VAR_DIR": str(root / "data"),
        "MODEL_STORE_DIR": str(root / "data" / "models"),
        "HF_HOME": str(root / "hf"),
        "DJANGO_STATIC_ROOT": str(root / "staticfiles"),  # the Dockerfile's ENV
        "HOSTNAME": socket.gethostname(),  # what $HOSTNAME is in a container (celery's %h)
        "OMP_NUM_THREADS": "1",
    }
    clean = {
        key: value
        for key, value in os.environ.items()
        if key in {"HOME", "LANG", "LC_ALL", "TMPDIR", "USER"}
    }

    def env_for(service: str, path: str, **extra: str) -> dict[str, str]:
        return {
            **clean,
            **compose_environment(service, dotenv),
            **outside_containers,
            "PATH": f"{path}:/usr/bin:/bin",
            **extra,
        }

    web_bin = str(web_venv / "bin")
    # The trainer image has the wheel installed; here its commands run this checkout's code.
    shims = root / "trainer-bin"
    shims.mkdir()
    (shims / "rlhf-annotate").write_text(f'#!/bin/sh\nexec {sys.executable} -m config "$@"\n')
    (shims / "rlhf-annotate").chmod(0o755)
    trainer_path = f"{shims}:{Path(sys.executable).parent}"

    stack = Stack(
        root=root,
        web_env=env_for("web", web_bin, PORT=str(port), GUNICORN_WORKERS="2"),
        trainer_env=env_for("gpu-worker", trainer_path, PYTHONPATH=str(REPO)),
        port=port,
        https_port=https_port,
        lan=lan,
    )
    try:
        # The Dockerfile, then the one-shot services, in compose's order.
        stack.run(["rlhf-annotate", "collectstatic", "--noinput"], stack.web_env)
        migrated = stack.run(compose_command("migrate"), env_for("migrate", web_bin))
        assert f"admin '{ADMIN[0]}' created" in migrated.stdout
        stack.run(
            compose_command("model-init"), env_for("model-init", trainer_path, PYTHONPATH=str(REPO))
        )
        # Test data: the demo campaigns and their labellers (a command the product ships).
        stack.run(["rlhf-annotate", "load_demo"], stack.web_env)

        stack.start("web", compose_command("web"), stack.web_env)
        stack.wait_until("web", lambda: stack.healthy("web", stack.web_env))
        stack.start("worker", compose_command("worker"), env_for("worker", web_bin))
        stack.start("gpu-worker", compose_command("gpu-worker"), stack.trainer_env)
        caddy_env = {
            **clean,
            **compose_environment("proxy", dotenv),
            "SITE_ADDRESS": "127.0.0.1",
            "UPSTREAM": f"127.0.0.1:{port}",
            "HTTP_PORT": str(free_port()),
            "HTTPS_PORT": str(https_port),
            "CADDY_ADMIN": f"127.0.0.1:{free_port()}",
            "XDG_DATA_HOME": str(root / "caddy-data"),
            "XDG_CONFIG_HOME": str(root / "caddy-config"),
            "PATH": "/usr/bin:/bin",
        }
        # The caddy image's own command, with the Caddyfile compose mounts.
        caddy = [
            "caddy",
            "run",
            "--config",
            str(REPO / "deploy/Caddyfile"),
            "--adapter",
            "caddyfile",
        ]
        stack.start("proxy", caddy, caddy_env)
        stack.wait_until("proxy", lambda: _answers(f"{stack.https_url}/healthz"))
        yield stack
    finally:
        stack.stop()
        drop_database()


def _answers(url: str) -> bool:
    import ssl

    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    try:
        with urllib.request.urlopen(url, timeout=3, context=context) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def new_context(browser):
    contexts, errors = [], []

    def factory(**options):
        context = browser.new_context(ignore_https_errors=True, **options)
        context.set_default_timeout(15_000)
        context.on("page", lambda page: page.on("pageerror", lambda e: errors.append(str(e))))
        contexts.append(context)
        return context

    yield factory
    for context in contexts:
        context.close()
    assert not errors, f"JavaScript errors on the page: {errors}"


def log_in(page, base: str, username: str, password: str):
    page.goto(f"{base}/accounts/login/")
    page.get_by_label("Username").fill(username)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Log in").click()


def test_labeller_ranks_through_the_tls_proxy_and_the_admin_sees_it(stack, new_context):
    from playwright.sync_api import expect

    context = new_context()
    page = context.new_page()
    static_answers: dict[str, int] = {}
    page.on(
        "response",
        lambda r: (
            static_answers.__setitem__(urlparse(r.url).path, r.status)
            if "/static/" in r.url
            else None
        ),
    )
    login = page.goto(f"{stack.https_url}/")
    assert "max-age=" in login.headers["strict-transport-security"]
    log_in(page, stack.https_url, "alice", LABELLERS["alice"])
    expect(page.get_by_role("heading", name="Your campaigns")).to_be_visible()
    cookies = {cookie["name"]: cookie for cookie in context.cookies()}
    assert cookies["sessionid"]["secure"] and cookies["csrftoken"]["secure"]

    page.get_by_role("link", name="Start labelling: Demo: helpful answers, round 0").click()
    page.locator("#acknowledge").click()
    # The cards exist only when the page's script ran; the layout only with its stylesheet.
    expect(page.locator(".completion")).to_have_count(4)
    assert page.evaluate("getComputedStyle(document.querySelector('.topbar')).display") == "flex"
    hashed = {
        path: status
        for path, status in static_answers.items()
        if re.search(r"\.[0-9a-f]{12}\.", path)
    }
    assert any(p.startswith("/static/annotation/label.") for p in hashed), static_answers
    assert any(p.startswith("/static/css/app.") for p in hashed), static_answers
    assert set(static_answers.values()) == {200}, static_answers

    for key in ("a", "1", "b", "2", "c", "2", "d", "f"):
        page.keyboard.press(key)
    expect(page.locator("#submit")).to_be_enabled()
    page.keyboard.press("Enter")
    expect(page.locator("#validation")).to_contain_text("Next task loaded")

    admin = new_context().new_page()
    log_in(admin, stack.https_url, *ADMIN)
    admin.goto(f"{stack.https_url}/dashboard/")
    admin.get_by_role("link", name="Demo: helpful answers, round 0").first.click()
    expect(admin.get_by_text(re.compile(r"\b1 of \d+ rankings"))).to_be_visible()


def test_login_over_plain_http_on_a_lan_address_works_and_says_it_is_unencrypted(
    stack, new_context
):
    from playwright.sync_api import expect

    if stack.lan is None:
        pytest.skip("this machine has no address besides loopback")
    base = f"http://{stack.lan}:{stack.port}"
    context = new_context()
    page = context.new_page()
    page.goto(f"{base}/accounts/login/")
    expect(page.locator("#plain-http-warning")).to_contain_text("unencrypted")
    log_in(page, base, "bob", LABELLERS["bob"])
    expect(page.get_by_role("heading", name="Your campaigns")).to_be_visible()
    assert not any(cookie["secure"] for cookie in context.cookies())


def test_forwarded_headers_count_only_from_the_trusted_proxy(stack):
    if stack.lan is None:
        pytest.skip("this machine has no address besides loopback")
    request = urllib.request.Request(
        f"http://{stack.lan}:{stack.port}/accounts/login/",
        headers={"X-Forwarded-Proto": "https", "X-Forwarded-For": "203.0.113.9"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        cookie = response.headers["Set-Cookie"]
        assert "Secure" not in cookie and "Strict-Transport-Security" not in response.headers


def test_api_docs_load_swagger_ui_from_our_own_static_files(stack, new_context):
    from playwright.sync_api import expect

    page = new_context().new_page()
    requested: list[str] = []
    page.on("request", lambda r: requested.append(r.url))
    page.goto(f"{stack.https_url}/api/docs/")
    expect(page.locator(".swagger-ui .info .title")).to_contain_text("RLHF annotation API")
    foreign = [url for url in requested if not url.startswith(stack.https_url)]
    assert not foreign, foreign


def test_every_dashboard_page_renders_on_the_web_image_without_torch(stack, new_context):
    """A crawl of the admin's dashboard through gunicorn: the web environment has no torch, so a
    page that imported it would answer 500."""
    context = new_context()
    log_in(context.new_page(), stack.https_url, *ADMIN)
    seen, queue, failures = set(), ["/dashboard/"], []
    while queue and len(seen) < 80:
        path = queue.pop(0)
        if path in seen:
            continue
        seen.add(path)
        response = context.request.get(stack.https_url + path)
        if response.status >= 500:
            failures.append((path, response.status))
        if "text/html" not in response.headers.get("content-type", ""):
            continue
        for link in re.findall(r'href="(/dashboard/[^"#?]*)"', response.text()):
            if link not in seen:
                queue.append(link)
    assert len(seen) > 15, seen
    assert any("/import/" in path for path in seen) and any("/training/new/" in p for p in seen)
    assert not failures, failures


def test_workers_pass_their_health_checks_and_the_gpu_worker_takes_jobs(stack):
    if not stack.web_env["REDIS_URL"]:
        pytest.skip("the embedded broker answers no broadcast pings; CI runs this on Redis")
    assert stack.healthy("worker", stack.web_env)
    assert stack.healthy("gpu-worker", stack.trainer_env)
    # Sent from the web environment (no torch), run on the gpu queue by the trainer's worker.
    code = (
        "from config.celery import app; "
        "print(app.send_task('training.tasks.worker_info', queue='gpu').get(timeout=60))"
    )
    result = stack.run(
        [str(Path(stack.web_env["PATH"].split(":")[0]) / "python"), "-c", code], stack.web_env
    )
    assert "'torch': '2." in result.stdout
