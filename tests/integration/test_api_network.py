"""Subnets, racks, leases and boot resources through the api into a real region."""

from ipaddress import IPv4Address, IPv4Interface

from metalbus.contracts.leases import LeaseCommitRequest, LeaseOfferRequest, LeaseReleaseRequest
from metalbus.contracts.racks import RackServiceAnnouncement, RackServiceKind
from metalbus.subjects import LEASE_COMMIT, LEASE_OFFER, LEASE_RELEASE, RACK_ANNOUNCE
from tests.conftest import NatsServer
from tests.integration.test_api_auth import api_stack
from tests.integration.test_api_machines import error_of

SUBNET = {
    "cidr": "10.20.0.0/24",
    "gateway": "10.20.0.1",
    "dns_servers": ["10.20.0.2"],
    "dynamic_start": "10.20.0.100",
    "dynamic_end": "10.20.0.199",
}


async def test_subnets_are_added_listed_and_their_range_changed(nats_server: NatsServer, database_dsn: str) -> None:
    async with api_stack(nats_server, database_dsn) as stack:
        created = await stack.client.post("/api/v1/subnets", json=SUBNET)
        assert created.status_code == 201
        subnet = created.json()
        assert (subnet["cidr"], subnet["managed"], subnet["lease_time_s"]) == ("10.20.0.0/24", True, 600)
        assert (await stack.client.get("/api/v1/subnets")).json() == [subnet]

        url = f"/api/v1/subnets/{subnet['subnet_id']}"
        changed = await stack.client.patch(url, json={"dynamic_start": "10.20.0.150", "lease_time_s": 300})
        assert changed.status_code == 200
        assert changed.json() == subnet | {"dynamic_start": "10.20.0.150", "lease_time_s": 300}
        assert (await stack.client.get("/api/v1/subnets")).json() == [changed.json()]

        outside = error_of(await stack.client.patch(url, json={"dynamic_end": "10.30.0.1"}), 400)
        assert outside["code"] == "bad_request"
        assert error_of(await stack.client.patch("/api/v1/subnets/999", json={}), 404)["code"] == "not_found"
        assert (
            error_of(await stack.client.post("/api/v1/subnets", json={"cidr": "10.20.0.0/33"}), 422)["fields"][0][
                "field"
            ]
            == "body.cidr"
        )
        assert error_of(await stack.client.patch(url, json={"lease_time_s": 5}), 422)["fields"][0]["field"] == (
            "body.lease_time_s"
        )
        assert error_of(await stack.client.patch("/api/v1/subnets/0", json={}), 422)["fields"][0]["field"] == (
            "path.subnet_id"
        )
        assert (await stack.client.get("/api/v1/subnets")).json() == [changed.json()]


async def test_racks_are_listed_with_health_interfaces_and_served_subnets(
    nats_server: NatsServer, database_dsn: str
) -> None:
    async with api_stack(nats_server, database_dsn) as stack:
        subnet = (await stack.client.post("/api/v1/subnets", json=SUBNET)).json()
        announcement = RackServiceAnnouncement(
            rack_id="rack-9",
            service=RackServiceKind.DHCP,
            hostname="lab-rack-9",
            version="0.1.0",
            heartbeat_interval_s=30,
            interfaces=[IPv4Interface("10.20.0.2/24"), IPv4Interface("192.168.50.2/24")],
        )
        assert (await stack.bus.request(RACK_ANNOUNCE, announcement)).known
        [rack] = (await stack.client.get("/api/v1/racks")).json()
        assert rack["rack_id"] == "rack-9"
        [service] = rack["services"]
        assert (service["service"], service["healthy"]) == ("rack-dhcp", True)
        assert service["interfaces"] == ["10.20.0.2/24", "192.168.50.2/24"]
        assert service["served_subnet_ids"] == [subnet["subnet_id"]]


async def test_leases_are_listed_by_subnet_and_mac_active_ones_by_default(
    nats_server: NatsServer, database_dsn: str
) -> None:
    async with api_stack(nats_server, database_dsn) as stack:
        subnet = (await stack.client.post("/api/v1/subnets", json=SUBNET)).json()
        bound = {}
        for mac in ("52:54:00:00:00:01", "52:54:00:00:00:02"):
            offer = LeaseOfferRequest(rack_id="rack-1", mac=mac, link_address=IPv4Address("10.20.0.2"))
            offered = (await stack.bus.request(LEASE_OFFER, offer)).lease
            commit = LeaseCommitRequest(rack_id="rack-1", mac=mac, ip=offered.ip)
            bound[mac] = await stack.bus.request(LEASE_COMMIT, commit)
        await stack.bus.request(
            LEASE_RELEASE,
            LeaseReleaseRequest(rack_id="rack-1", mac="52:54:00:00:00:02", ip=bound["52:54:00:00:00:02"].ip),
        )

        active = (await stack.client.get("/api/v1/leases", params={"subnet_id": subnet["subnet_id"]})).json()
        assert [(lease["mac"], lease["state"]) for lease in active] == [("52:54:00:00:00:01", "bound")]
        assert active[0]["ip"] == str(bound["52:54:00:00:00:01"].ip)
        every = (await stack.client.get("/api/v1/leases", params={"active_only": "false"})).json()
        assert sorted((lease["mac"], lease["state"]) for lease in every) == [
            ("52:54:00:00:00:01", "bound"),
            ("52:54:00:00:00:02", "released"),
        ]
        by_mac = (
            await stack.client.get("/api/v1/leases", params={"mac": "52-54-00-00-00-02", "active_only": False})
        ).json()
        assert [lease["state"] for lease in by_mac] == ["released"]
        assert (await stack.client.get("/api/v1/leases", params={"subnet_id": 999})).json() == []
        assert (
            error_of(await stack.client.get("/api/v1/leases", params={"mac": "nope"}), 422)["fields"][0]["field"]
            == "query.mac"
        )


async def test_boot_resources_are_set_and_listed(nats_server: NatsServer, database_dsn: str) -> None:
    async with api_stack(nats_server, database_dsn) as stack:
        resource = {
            "architecture": "amd64/uefi",
            "purpose": "commissioning",
            "kernel": "images/amd64/vmlinuz",
            "initrd": "images/amd64/initrd.img",
            "squashfs": None,
            "kernel_params": "console=ttyS0",
        }
        assert (await stack.client.get("/api/v1/boot-resources")).json() == []
        stored = await stack.client.put("/api/v1/boot-resources", json=resource)
        assert stored.status_code == 200
        assert stored.json() == resource | {"schema_version": 1}
        replaced = await stack.client.put("/api/v1/boot-resources", json=resource | {"kernel": "images/v2/vmlinuz"})
        assert (await stack.client.get("/api/v1/boot-resources")).json() == [replaced.json()]
        escaping = error_of(await stack.client.put("/api/v1/boot-resources", json=resource | {"kernel": "../x"}), 422)
        assert escaping["fields"][0]["field"] == "body.kernel"
