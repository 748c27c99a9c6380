"""Each VM's BMC: OpenIPMI's ``ipmi_sim`` configured so that IPMI chassis power starts and stops the VM's qemu.

The BMC listens (IPMI 2.0 lanplus, user ``admin`` with a generated password) on the VM's BMC address inside the
lab namespace and waits for its qemu on a loopback socket (``serial 15 … codec VM``: qemu's
``ipmi-bmc-extern``). Power goes through a chassis control script rather than ipmi_sim's ``startcmd``: ipmi_sim
refuses "set boot device" (which rack-power sends before a network boot) unless a chassis control program
exists, and with one it routes power there too. The script starts qemu in the background on power on (its pid
and start ticks in ``machine.pid``, the identity :mod:`metalbus.stack.processes` reads), stops it on power off
(SIGTERM, then SIGKILL after 5 s), restarts it on reset, and reports power on exactly while that qemu lives; the
boot device set over IPMI is recorded in ``boot`` (qemu always boots from its NIC first, as MAAS machines do).
"""

import os
import secrets
import shlex
from dataclasses import dataclass
from ipaddress import IPv4Address
from pathlib import Path

from metalbus.lab.topology import VmPlan

USERNAME = "admin"
PASSWORD_BYTES = 8  # 16 hex characters: within IPMI's 16/20-character limit

CHASSIS_CONTROL = """#!/bin/sh
# ipmi_sim chassis control: "get <parm>..." prints "<parm>:<value>" lines; "set <parm> <value>..." applies them.
D={directory}
PIDFILE="$D/machine.pid"
ticks_of() {{ s=$(cat "/proc/$1/stat" 2>/dev/null) || return 1; set -- ${{s##*) }}; [ "$1" != Z ] && echo "${{20}}"; }}
alive() {{
  [ -f "$PIDFILE" ] || return 1
  set -- $(cat "$PIDFILE")
  [ "$(ticks_of "$1")" = "$2" ]
}}
power_on() {{
  alive && return 0
  {qemu} </dev/null >>"$D/qemu.log" 2>&1 &
  echo "$! $(ticks_of $!)" > "$PIDFILE"
}}
power_off() {{
  alive || return 0
  set -- $(cat "$PIDFILE")
  kill -TERM "$1"
  n=0
  while alive && [ $n -lt 50 ]; do sleep 0.1; n=$((n + 1)); done
  alive && kill -KILL "$1"
  rm -f "$PIDFILE"
}}
op=$1; shift
if [ "$op" = get ]; then
  for parm in "$@"; do
    case $parm in
      boot) echo "boot:$(cat "$D/boot" 2>/dev/null || echo default)";;
      power) if alive; then echo "power:1"; else echo "power:0"; fi;;
    esac
  done
  exit 0
fi
while [ $# -ge 2 ]; do
  case $1 in
    boot) echo "$2" > "$D/boot";;
    power) if [ "$2" = 1 ]; then power_on; else power_off; fi;;
    reset) if [ "$2" = 1 ] && alive; then power_off; power_on; fi;;
  esac
  shift 2
done
"""

LAN_CONF = """name "{name}"
set_working_mc 0x20
  startlan 1
    addr {address} {port}
    priv_limit admin
    allowed_auths_callback none md2 md5 straight
    allowed_auths_user none md2 md5 straight
    allowed_auths_operator none md2 md5 straight
    allowed_auths_admin none md2 md5 straight
    guid {guid}
  endlan
{serial}  chassis_control "{control}"
  user 2 true  "{username}" "{password}" admin 10 none md2 md5 straight
"""

EMULATOR_COMMANDS = """mc_setbmc 0x20
mc_add 0x20 0 no-device-sdrs 0x23 9 8 0x9f 0x1291 0xf02 persist_sdr
mc_enable 0x20
"""


@dataclass(frozen=True)
class BmcFiles:
    """One BMC's configuration and state, in ``<lab dir>/<vm name>/bmc/``."""

    directory: Path

    @property
    def lan_conf(self) -> Path:
        return self.directory / "lan.conf"

    @property
    def emulator_commands(self) -> Path:
        return self.directory / "emu.cmd"

    @property
    def chassis_control(self) -> Path:
        return self.directory / "chassis-control.sh"

    @property
    def state(self) -> Path:
        return self.directory / "state"

    @property
    def log(self) -> Path:
        return self.directory / "ipmi_sim.log"

    @property
    def pid_file(self) -> Path:
        return self.directory / "ipmi_sim.pid"


def generate_password() -> str:
    return secrets.token_hex(PASSWORD_BYTES)


def write_bmc_config(files: BmcFiles, vm: VmPlan, password: str, machine_dir: Path, qemu: list[str]) -> None:
    """One lab VM's BMC: its qemu is the machine, joined to the BMC on its serial port."""
    write_simulated_bmc(
        files,
        name=vm.name,
        address=vm.bmc_address,
        port=vm.bmc_port,
        password=password,
        machine_dir=machine_dir,
        machine_command=qemu,
        serial_port=vm.bmc_serial_port,
    )


def write_simulated_bmc(
    files: BmcFiles,
    *,
    name: str,
    address: IPv4Address | str,
    port: int,
    password: str,
    machine_dir: Path,
    machine_command: list[str],
    serial_port: int | None = None,
) -> None:
    """lan.conf (0600: it holds the password), the emulator commands and the chassis control script that runs
    ``machine_command`` as the machine (power on starts it, off stops it); ``serial_port``: where qemu's
    ``ipmi-bmc-extern`` connects, None for a machine that is not a qemu."""
    files.directory.mkdir(parents=True, exist_ok=True)
    files.state.mkdir(exist_ok=True)
    control = CHASSIS_CONTROL.format(directory=shlex.quote(str(machine_dir)), qemu=shlex.join(machine_command))
    files.chassis_control.write_text(control)
    files.chassis_control.chmod(0o755)
    files.lan_conf.touch(mode=0o600)
    files.lan_conf.write_text(
        LAN_CONF.format(
            name=name,
            address=address,
            port=port,
            guid=os.urandom(16).hex(),
            serial="" if serial_port is None else f"  serial 15 127.0.0.1 {serial_port} codec VM ipmb 0x20\n",
            control=files.chassis_control,
            username=USERNAME,
            password=password,
        )
    )
    files.emulator_commands.write_text(EMULATOR_COMMANDS)


def ipmi_sim_argv(files: BmcFiles, namespace: str) -> list[str]:
    """``ip netns exec`` execs ipmi_sim in place: the pid started is ipmi_sim's own."""
    return [
        *("ip", "netns", "exec", namespace, "ipmi_sim", "-n"),
        *("-c", str(files.lan_conf), "-f", str(files.emulator_commands), "-s", str(files.state)),
    ]
