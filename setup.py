"""Packaging for the Glance Sync Manager."""

from setuptools import find_packages, setup

setup(
    name="glance-sync-manager",
    version="0.1.0",
    description=(
        "Keeps OpenStack images in sync between a cascading glance and the "
        "glances of many cascaded regions, over ZeroMQ and SSH."
    ),
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.11",
    packages=find_packages(include=["glancesync*", "coordinator*", "agent*", "glance_proxy*"]),
    include_package_data=True,
    package_data={"coordinator": ["migrations/*.ini", "migrations/*.py", "migrations/versions/*.py"]},
    install_requires=[
        "pyzmq>=25",
        "msgpack>=1.0",
        "paramiko>=3.4",
        "oslo.config>=9.0",
        "oslo.log>=5.0",
        "oslo.utils>=6.0",
        "oslo.db>=16.0",
        "python-glanceclient>=4.0",
        "keystoneauth1>=5.0",
        "PyYAML>=6.0",
        "SQLAlchemy>=2.0",
        "alembic>=1.10",
        "WebOb>=1.8",
        "gunicorn>=21.2",
        "rich>=13",
        "prometheus_client>=0.20",
    ],
    # The journal's drivers beyond SQLite: pip install 'glance-sync-manager[postgresql]' or '[mysql]'.
    extras_require={
        "postgresql": ["psycopg2-binary>=2.9"],
        "mysql": ["PyMySQL>=1.1"],
    },
    entry_points={
        "console_scripts": [
            "glance-sync-coordinator = coordinator.cmd:main",
            "glance-sync = coordinator.cmd:main",
            "glance-sync-agent = agent.cmd:main",
            "glance-sync-proxy = glance_proxy.cmd:main",
            "glance-sync-status = glancesync.status:main",
            "glance-sync-manage = coordinator.manage:main",
        ],
        "oslo.config.opts": [
            "glancesync = glancesync.opts:list_opts",
        ],
        "glance_store.drivers": [
            "cascaded = glance_proxy.store:Store",
        ],
        "openstack.cli.extension": [
            "glance_sync = glancesync.osc.plugin",
        ],
        "openstack.glance_sync.v1": [
            "image_sync_status = glancesync.osc.commands:ShowSyncStatus",
            "image_sync_show = glancesync.osc.commands:ShowImageSync",
            "image_sync_wait = glancesync.osc.commands:WaitImageSync",
            "image_sync_resync = glancesync.osc.commands:ResyncImage",
            "image_sync_plan = glancesync.osc.commands:ShowSyncPlan",
            "image_sync_cancel = glancesync.osc.commands:CancelImageSync",
        ],
        "paste.filter_factory": [
            "glancesync = glance_proxy.middleware:filter_factory",
        ],
    },
    classifiers=[
        "Environment :: OpenStack",
        "Programming Language :: Python :: 3",
        "License :: OSI Approved :: Apache Software License",
    ],
)
