"""Apache Kafka 4.1, single-node KRaft, from Maven Central jars on the machine's Java.

Layout under <home>: kafka/libs (jars), kafka/server.properties, kafka/data (log dirs and
the KRaft metadata log), logs/kafka-server.log (broker log4j), logs/kafka.log (JVM output,
Maven and storage-format output).
"""

from __future__ import annotations

import hashlib
import shutil
import signal
from pathlib import Path

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient

from infra.services import process
from infra.settings import Settings

NAME = "kafka"
# Set this to use a server of your own; `up` then only checks that it answers.
EXTERNAL_ENV = "TAPEFLOW_KAFKA_BOOTSTRAP"
# SIGTERM makes the broker shut down cleanly (flushes logs, leaves no recovery to do).
STOP_SIGNAL = signal.SIGTERM
STOP_TIMEOUT_S = 30.0

# Fixed so re-creating server.properties never disagrees with the formatted storage.
# It is a base64url UUID, the form StorageTool demands (here the bytes "tapeflow-local-1").
CLUSTER_ID = "dGFwZWZsb3ctbG9jYWwtMQ"
NODE_ID = 1

_CONFIG_DIR = Path(__file__).resolve().parent.parent / "kafka"
POM = _CONFIG_DIR / "pom.xml"
LOG4J_CONFIG = _CONFIG_DIR / "log4j2.xml"
JVM_OPTS = ("-Xmx1G", "-Xms256m", "-XX:+UseG1GC", "-XX:MaxGCPauseMillis=20")


def external(settings: Settings) -> bool:
    return settings.kafka_bootstrap is not None


def url(settings: Settings) -> str:
    return settings.bootstrap


def ports(settings: Settings) -> dict[str, int]:
    return {
        "TAPEFLOW_KAFKA_PORT": settings.kafka_port,
        "TAPEFLOW_KAFKA_CONTROLLER_PORT": settings.kafka_controller_port,
    }


def logs(settings: Settings) -> list[Path]:
    return [process.home(settings) / "logs" / "kafka-server.log", process.log_file(settings, NAME)]


def healthy(settings: Settings) -> bool:
    # A plain TCP probe first: cheap, and librdkafka stays quiet while the broker boots.
    if not external(settings) and not process.port_open(settings.kafka_port):
        return False
    admin = AdminClient({"bootstrap.servers": settings.bootstrap, "log_level": 0})
    try:
        admin.list_topics(timeout=2)
    except KafkaException:
        return False
    return True


def start(settings: Settings) -> int:
    java = process.require_binary("java", "install Java 17+ (apt-get install openjdk-17-jre)")
    libs = fetch_jars(settings)
    config = write_config(settings)
    format_storage(settings, java, libs, config)
    return process.spawn(
        settings,
        NAME,
        [java, *_jvm_args(settings, libs), "kafka.Kafka", str(config)],
        cwd=process.service_dir(settings, NAME),
    )


def fetch_jars(settings: Settings) -> Path:
    """Copy the broker's runtime jars into <home>/kafka/libs, once per version of the pom."""
    libs = process.service_dir(settings, NAME) / "libs"
    stamp = libs / ".pom.sha256"
    digest = hashlib.sha256(POM.read_bytes()).hexdigest()
    if stamp.exists() and stamp.read_text().strip() == digest:
        return libs
    mvn = process.require_binary("mvn", "install Maven 3.8+ (apt-get install maven)")
    # Copy into a scratch dir and swap it in, so an interrupted fetch never looks complete.
    scratch = libs.with_name("libs.partial")
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(parents=True)
    process.run(
        [
            mvn,
            "-q",
            "-Dstyle.color=never",
            "-B",
            "dependency:copy-dependencies",
            "-DincludeScope=runtime",
            f"-DoutputDirectory={scratch}",
            "-f",
            str(POM),
        ],
        log=process.log_file(settings, NAME),
    )
    (scratch / ".pom.sha256").write_text(digest + "\n")
    shutil.rmtree(libs, ignore_errors=True)
    scratch.rename(libs)
    return libs


def write_config(settings: Settings) -> Path:
    """(Re)write server.properties each start so port changes in settings take effect."""
    base = process.service_dir(settings, NAME)
    (base / "data").mkdir(parents=True, exist_ok=True)
    port, controller = settings.kafka_port, settings.kafka_controller_port
    props = {
        "process.roles": "broker,controller",
        "node.id": str(NODE_ID),
        # A static voter set rather than controller.quorum.bootstrap.servers: the endpoint
        # is read from this file on every start instead of being frozen into the metadata
        # log at format time, so changing TAPEFLOW_KAFKA_CONTROLLER_PORT keeps working.
        "controller.quorum.voters": f"{NODE_ID}@127.0.0.1:{controller}",
        "listeners": f"PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller}",
        "advertised.listeners": f"PLAINTEXT://127.0.0.1:{port}",
        "controller.listener.names": "CONTROLLER",
        "inter.broker.listener.name": "PLAINTEXT",
        "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
        "log.dirs": str(base / "data"),
        "num.partitions": "4",
        "auto.create.topics.enable": "true",
        # Internal topics default to replication 3 and would never be created on one node.
        "offsets.topic.replication.factor": "1",
        "transaction.state.log.replication.factor": "1",
        "transaction.state.log.min.isr": "1",
        "share.coordinator.state.topic.replication.factor": "1",
        "share.coordinator.state.topic.min.isr": "1",
        # No other members will ever join late; don't make every first poll wait 3 s.
        "group.initial.rebalance.delay.ms": "0",
    }
    config = base / "server.properties"
    text = "# Written by infra/services/kafka.py on every start; edits are lost.\n"
    config.write_text(text + "".join(f"{k}={v}\n" for k, v in props.items()))
    return config


def format_storage(settings: Settings, java: str, libs: Path, config: Path) -> None:
    """Format the KRaft storage once; meta.properties marks a formatted log dir."""
    if (process.service_dir(settings, NAME) / "data" / "meta.properties").exists():
        return
    # With controller.quorum.voters set, Kafka 4.1 formats without --standalone /
    # --initial-controllers (those are for the dynamic quorum and are rejected here).
    process.run(
        [
            java,
            *_jvm_args(settings, libs),
            "kafka.tools.StorageTool",
            "format",
            "--cluster-id",
            CLUSTER_ID,
            "--config",
            str(config),
            "--ignore-formatted",
        ],
        log=process.log_file(settings, NAME),
    )


def _jvm_args(settings: Settings, libs: Path) -> list[str]:
    return [
        *JVM_OPTS,
        "-Djava.awt.headless=true",
        f"-Dkafka.logs.dir={process.home(settings) / 'logs'}",
        f"-Dlog4j2.configurationFile={LOG4J_CONFIG}",
        "-cp",
        f"{libs}/*",  # java expands the wildcard itself; no shell involved
    ]
