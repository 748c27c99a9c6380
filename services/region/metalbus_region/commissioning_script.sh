#!/bin/sh
# metalbus commissioning runner: the user-data a commissioning machine reads from its metadata service.
#
# With no argument (as cloud-init or the ephemeral environment's init runs it): gather the hardware inventory,
# post it as the script result "metalbus-inventory" (op=signal, status WORKING), run the scripts the operator
# chose for this commissioning (rendered into user_scripts() by the region; each gets its timeout, its output
# and exit status are posted the same way), then post the final OK. If gathering or a chosen script fails, its
# output and exit status are posted and the runner stops: the region then fails commissioning naming the script
# and its status. A post the metadata service refuses (4xx) ends the run with 3; when it never answers (five
# tries: its rack died, say) the runner exits 75 (EX_TEMPFAIL) and the ephemeral environment boots again, through
# whichever rack answers then.
# With the argument "inventory": print the inventory as JSON (the region's HardwareInventory) and post nothing.
#
# Where to post, and as whom: the kernel parameters metalbus.metadata_url, metalbus.consumer_key,
# metalbus.token_key and metalbus.token_secret, or the variables METALBUS_METADATA_URL, METALBUS_CONSUMER_KEY,
# METALBUS_TOKEN_KEY and METALBUS_TOKEN_SECRET, which win. Requests carry OAuth 1.0a PLAINTEXT headers and a
# multipart body laid out as MAAS's signal (op, status, name, exit_status, runtime, files <name>.out/.err).
# METALBUS_PROC and METALBUS_SYS read another /proc and /sys (tests use a fixture tree).
# LLDP neighbours: one frame is captured on every interface whose link is up, with tcpdump (the ephemeral image
# carries Debian's), for at most metalbus.lldp_wait_s seconds (METALBUS_LLDP_WAIT_S wins; default 31: switches
# send every 30 s) — each capture ends at its first frame. METALBUS_LLDP_CAPTURE names another capture command
# (tests use a fake); without one, the inventory has no neighbours.
# POSIX sh (dash, busybox ash) with sed, awk, grep, tr, head, mktemp, base64, timeout, and curl or wget (busybox
# wget is enough: no -T, which segfaults in busybox 1.35 inside the guest).
set -u

PROC=${METALBUS_PROC:-/proc}
SYS=${METALBUS_SYS:-/sys}
INVENTORY_SCRIPT=metalbus-inventory
SIGNAL_VERSION=2012-03-01

# -- reading /proc and /sys -----------------------------------------------------------------------------------

first_line() {  # a file's first line; nothing if it is missing or refuses to be read (some sysfs files do)
    if [ -r "$1" ]; then head -n 1 "$1" 2>/dev/null || true; fi
}

trimmed() {
    sed 's/^[[:space:]]*//; s/[[:space:]]*$//'
}

json_string() {  # a JSON string: printable ASCII only, backslashes and double quotes escaped
    printf '"%s"' "$(printf '%s' "$1" | tr -cd '\040-\176' | sed 's/\\/\\\\/g; s/"/\\"/g')"
}

json_count() {  # a positive integer (leading zeros dropped), or null
    digits=$(printf '%s' "$1" | sed 's/^0*//')
    case $digits in
        '' | *[!0-9]*) printf null ;;
        *) printf '%s' "$digits" ;;
    esac
}

cpu_model() {
    model=$(sed -n 's/^model name[[:space:]]*:[[:space:]]*//p' "$PROC/cpuinfo" 2>/dev/null | head -n 1)
    [ -n "$model" ] || model=$(sed -n 's/^Hardware[[:space:]]*:[[:space:]]*//p' "$PROC/cpuinfo" 2>/dev/null | head -n 1)
    [ -n "$model" ] || model="$(uname -m) processor"
    printf '%s' "$model" | trimmed
}

cpu_count() {
    count=$(grep -c '^processor[[:space:]]*:' "$PROC/cpuinfo" 2>/dev/null)
    case $count in '' | 0 | *[!0-9]*) count=1 ;; esac
    printf '%s' "$count"
}

cpu_speed_mhz() {  # the highest clock the kernel knows (cpufreq, in kHz), else what /proc/cpuinfo says
    khz=$(first_line "$SYS/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq")
    case $khz in
        '' | *[!0-9]*) ;;
        *) json_count "$((khz / 1000))"; return 0 ;;
    esac
    json_count "$(sed -n 's/^cpu MHz[[:space:]]*:[[:space:]]*\([0-9]*\).*/\1/p' "$PROC/cpuinfo" 2>/dev/null | head -n 1)"
}

memory_mib() {
    awk '$1 == "MemTotal:" { printf "%d", $2 / 1024; exit }' "$PROC/meminfo" 2>/dev/null
}

block_devices() {  # disks with hardware behind them: loop, ram, zram and device-mapper nodes have no device/
    separator=""
    for device in "$SYS"/block/*; do
        [ -e "$device/device" ] || continue
        name=${device##*/}
        case $name in sr* | fd*) continue ;; esac  # optical and floppy drives are not disks
        sectors=$(first_line "$device/size")  # always in 512-byte units
        case $sectors in '' | *[!0-9]*) continue ;; esac
        model=$(first_line "$device/device/model" | trimmed)
        serial=$(first_line "$device/device/serial" | trimmed)
        [ -n "$serial" ] || serial=$(first_line "$device/serial" | trimmed)  # virtio-blk keeps it here
        printf '%s{"name": %s, "size_bytes": %s, "model": %s, "serial": %s}' "$separator" \
            "$(json_string "$name")" "$((sectors * 512))" "$(json_string "$model")" "$(json_string "$serial")"
        separator=", "
    done
}

link_is_up() {  # $1: /sys/class/net/<name>
    # The carrier is the link itself (LOWER_UP); operstate lags it (virtio-net says "down" for a while after
    # DHCP already worked) and only stands in when the carrier cannot be read (interface administratively down).
    case "$(first_line "$1/carrier")" in
        1) return 0 ;;
        0) return 1 ;;
        *) [ "$(first_line "$1/operstate")" = up ] ;;
    esac
}

network_interfaces() {  # NICs with hardware behind them and an Ethernet address: not lo, bridges, tunnels
    separator=""
    for interface in "$SYS"/class/net/*; do
        [ -e "$interface/device" ] || continue
        mac=$(first_line "$interface/address" | tr 'A-F' 'a-f')
        printf '%s\n' "$mac" | grep -Eq '^([0-9a-f]{2}:){5}[0-9a-f]{2}$' || continue
        link_up=false
        link_is_up "$interface" && link_up=true
        speed=$(first_line "$interface/speed")  # -1, or unreadable, while the link is down
        printf '%s{"name": %s, "mac": %s, "link_up": %s, "speed_mbps": %s}' "$separator" \
            "$(json_string "${interface##*/}")" "$(json_string "$mac")" "$link_up" "$(json_count "$speed")"
        separator=", "
    done
}

lldp_capture_command() {  # what captures and decodes one LLDP frame, if anything does
    capture=${METALBUS_LLDP_CAPTURE:-tcpdump}
    command -v "$capture" >/dev/null 2>&1 && printf '%s' "$capture"
}

lldp_wait_s() {
    wait_s=${METALBUS_LLDP_WAIT_S:-$(kernel_parameter lldp_wait_s)}
    case $wait_s in '' | *[!0-9]*) wait_s=31 ;; esac
    printf '%s' "$wait_s"
}

start_lldp_captures() {  # $1: a directory; in the background, one capture per interface whose link is up
    capture=$(lldp_capture_command) || return 0
    wait_s=$(lldp_wait_s)
    for interface in "$SYS"/class/net/*; do
        [ -e "$interface/device" ] || continue
        link_is_up "$interface" || continue
        name=${interface##*/}
        # -Z root: no privilege drop (the image has no tcpdump user); -c 1: the first frame ends the capture.
        timeout "$wait_s" "$capture" -i "$name" -Z root -c 1 -nn -v -s 1500 ether proto 0x88cc \
            >"$1/lldp.$name" 2>/dev/null &
    done
}

lldp_fields() {  # tcpdump -v's decoding of one LLDPDU: chassis id, port id, system name, one per line
    awk '
        /Chassis ID TLV/ { want = "chassis"; next }
        /Port ID TLV/ { want = "port"; next }
        want != "" && /Subtype/ { sub(/^[^:]*\): /, ""); value[want] = $0; want = ""; next }
        /System Name TLV/ { sub(/^.*length [0-9]+: /, ""); value["system"] = $0 }
        END {
            if (value["chassis"] != "" && value["port"] != "")
                printf "%s\n%s\n%s\n", value["chassis"], value["port"], value["system"]
        }
    ' "$1"
}

lldp_neighbours() {  # $1: the directory the captures wrote to (after they ended)
    separator=""
    for capture in "$1"/lldp.*; do
        [ -s "$capture" ] || continue
        fields=$(lldp_fields "$capture")
        chassis=$(printf '%s\n' "$fields" | sed -n 1p)
        [ -n "$chassis" ] || continue
        system_name=$(printf '%s\n' "$fields" | sed -n 3p)
        system_json=null
        [ -z "$system_name" ] || system_json=$(json_string "$system_name")
        printf '%s{"interface": %s, "chassis_id": %s, "port_id": %s, "system_name": %s}' "$separator" \
            "$(json_string "${capture##*/lldp.}")" "$(json_string "$chassis")" \
            "$(json_string "$(printf '%s\n' "$fields" | sed -n 2p)")" "$system_json"
        separator=", "
    done
}

inventory() {
    memory=$(memory_mib)
    case $memory in
        '' | 0 | *[!0-9]*) echo "metalbus: no MemTotal in $PROC/meminfo" >&2; return 1 ;;
    esac
    captures=$(mktemp -d) || return 1
    start_lldp_captures "$captures"
    printf '{"schema_version": 1, "cpu_model": %s, "cpu_count": %s, "cpu_speed_mhz": %s, "memory_mib": %s, ' \
        "$(json_string "$(cpu_model)")" "$(cpu_count)" "$(cpu_speed_mhz)" "$memory"
    printf '"block_devices": [%s], "interfaces": [%s], ' "$(block_devices)" "$(network_interfaces)"
    wait  # for the LLDP captures: each ends at its first frame or after lldp_wait_s
    printf '"lldp_neighbours": [%s]}\n' "$(lldp_neighbours "$captures")"
    rm -rf "$captures"
}

# -- talking to the metadata service --------------------------------------------------------------------------

kernel_parameter() {  # the value of metalbus.<name>=… on the kernel command line
    cmdline=$(first_line "$PROC/cmdline")
    set -f  # the words of /proc/cmdline are not file patterns
    for word in $cmdline; do
        case $word in
            "metalbus.$1="*) set +f; printf '%s' "${word#*=}"; return 0 ;;
        esac
    done
    set +f
}

setting() {  # $1: environment variable, $2: kernel parameter after "metalbus."
    eval "value=\${$1-}"
    [ -n "$value" ] || value=$(kernel_parameter "$2")
    if [ -z "$value" ]; then
        echo "metalbus: no $1 in the environment and no metalbus.$2 on the kernel command line" >&2
        return 1
    fi
    printf '%s' "$value"
}

REQUESTS=0

authorization() {  # OAuth 1.0a PLAINTEXT: the signature is "<consumer secret, empty>&<token secret>", escaped
    printf 'OAuth oauth_version="1.0", oauth_signature_method="PLAINTEXT", oauth_consumer_key="%s", ' "$CONSUMER_KEY"
    printf 'oauth_token="%s", oauth_signature="%%26%s", oauth_nonce="%s-%s-%s", oauth_timestamp="%s"' \
        "$TOKEN_KEY" "$TOKEN_SECRET" "$$" "$REQUESTS" "$(date +%s)" "$(date +%s)"
}

form_field() {  # name value
    printf '%s\r\n%s\r\n\r\n%s\r\n' "--$BOUNDARY" "Content-Disposition: form-data; name=\"$1\"" "$2"
}

form_file() {  # name path
    printf '%s\r\n%s\r\n%s\r\n\r\n' "--$BOUNDARY" \
        "Content-Disposition: form-data; name=\"$1\"; filename=\"$1\"" "Content-Type: application/octet-stream"
    cat "$2"
    printf '\r\n'
}

RACK_SILENT=75  # EX_TEMPFAIL: the metadata service never answered

http_post() {  # POST the body in file $1 to the signal URL: 0, 1 when refused (final), RACK_SILENT after 5 tries
    url="${METADATA_URL%/}/$SIGNAL_VERSION/"
    content_type="Content-Type: multipart/form-data; boundary=$BOUNDARY"
    attempt=1
    while :; do
        REQUESTS=$((REQUESTS + 1))  # here, not in authorization(): that runs in a subshell
        if command -v curl >/dev/null 2>&1; then
            curl -fsS --max-time 60 -H "Expect:" -H "$content_type" -H "Authorization: $(authorization)" \
                --data-binary "@$1" -o /dev/null "$url"
            outcome=$?
            [ "$outcome" -ne 22 ] || return 1  # the metadata service answered with an error status
        else
            wget -q -O /dev/null --header "$content_type" --header "Authorization: $(authorization)" \
                --post-file "$1" "$url" 2>"$WORK/wget.err"
            outcome=$?
            cat "$WORK/wget.err" >&2
            # An answer with an error status: GNU wget exits 8, busybox wget 1 saying "server returned error".
            [ "$outcome" -ne 8 ] && ! grep -q "server returned error" "$WORK/wget.err" || return 1
        fi
        [ "$outcome" -ne 0 ] || return 0
        [ "$attempt" -lt 5 ] || return "$RACK_SILENT"
        sleep "$attempt"
        attempt=$((attempt + 1))
    done
}

unposted() {  # the run's status after a signal failed with $1: RACK_SILENT stays, a refusal is 3
    [ "$1" -eq "$RACK_SILENT" ] && return "$RACK_SILENT"
    return 3
}

script_failed() {  # the run's status for a script that failed with $1 (posted): its own, but never RACK_SILENT
    if [ "$1" -eq "$RACK_SILENT" ]; then echo 1; else echo "$1"; fi
}

signal() {  # status [script name, exit status, runtime seconds, stdout file, stderr file]
    body="$WORK/signal.body"
    {
        form_field op signal
        form_field status "$1"
        if [ $# -gt 1 ]; then
            form_field name "$2"
            form_field exit_status "$3"
            form_field runtime "$4"
            form_file "$2.out" "$5"
            form_file "$2.err" "$6"
        fi
        printf '%s\r\n' "--$BOUNDARY--"
    } >"$body"
    http_post "$body"
}

# -- the scripts the operator chose for this commissioning (the region renders them in) -------------------------

user_scripts() {  # one line per chosen script: its name, its timeout in seconds, its content in base64
    : # metalbus: the chosen scripts go here
}

run_user_scripts() {  # each in turn, its result posted; the first that fails ends the run with its status
    user_scripts >"$WORK/chosen"
    while read -r name timeout_s encoded; do
        [ -n "$name" ] || continue
        path="$WORK/script-$name"
        printf '%s' "$encoded" | base64 -d >"$path" && chmod 0755 "$path" || {
            echo "metalbus: cannot unpack script $name" >&2; return 2; }
        started=$(date +%s)
        timeout "$timeout_s" "$path" </dev/null >"$WORK/$name.out" 2>"$WORK/$name.err"
        status=$?
        signal WORKING "$name" "$status" "$(($(date +%s) - started))" "$WORK/$name.out" "$WORK/$name.err" \
            </dev/null || { unposted $?; return $?; }
        [ "$status" -eq 0 ] || return "$(script_failed "$status")"  # the region has failed commissioning with it
    done <"$WORK/chosen"
}

commission() {
    METADATA_URL=$(setting METALBUS_METADATA_URL metadata_url) || return 2
    CONSUMER_KEY=$(setting METALBUS_CONSUMER_KEY consumer_key) || return 2
    TOKEN_KEY=$(setting METALBUS_TOKEN_KEY token_key) || return 2
    TOKEN_SECRET=$(setting METALBUS_TOKEN_SECRET token_secret) || return 2
    WORK=$(mktemp -d) || return 2
    trap 'rm -rf "$WORK"' EXIT
    BOUNDARY="metalbus-$$-$(date +%s)-boundary"

    started=$(date +%s)
    (inventory) >"$WORK/$INVENTORY_SCRIPT.out" 2>"$WORK/$INVENTORY_SCRIPT.err"
    status=$?
    runtime=$(($(date +%s) - started))
    signal WORKING "$INVENTORY_SCRIPT" "$status" "$runtime" \
        "$WORK/$INVENTORY_SCRIPT.out" "$WORK/$INVENTORY_SCRIPT.err" || { unposted $?; return $?; }
    [ "$status" -eq 0 ] || return "$(script_failed "$status")"  # the region has failed commissioning with it
    run_user_scripts || return $?
    signal OK || { unposted $?; return $?; }
}

case ${1:-commission} in
    inventory) inventory ;;
    commission) commission ;;
    *) echo "usage: $0 [inventory|commission]" >&2; exit 2 ;;
esac
