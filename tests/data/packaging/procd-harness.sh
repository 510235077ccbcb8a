# Test harness for files/etc/init.d/bpfqos, run by tests/init_script.rs under dash and busybox sh:
#
#   sh procd-harness.sh <init script> <action>      action: source | start | reload
#
# Environment: UCI_BIN (the real uci CLI built from libuci's sources), UCI_CONFIG_DIR (directory
# holding the `bpfqos` config under test), PROCD_LOG (file the stubs append to).
#
# Nothing here is OpenWrt code. Two kinds of stand-ins:
# - procd_* and `start`: stubs that record each call as one line, name and arguments separated by
#   tabs, in $PROCD_LOG. procd, ubusd and rpcd are not available off OpenWrt.
# - config_load, config_get, config_get_bool, config_foreach: a minimal TEST SHIM with the calling
#   conventions of OpenWrt's /lib/functions.sh (which this does not copy), implemented by asking
#   the real `uci -c $UCI_CONFIG_DIR` command line tool for each value, so the script is tested
#   against real UCI parsing of the config file.

# shellcheck disable=SC2119,SC2120 # stubs record whatever arguments they get, also none
set -u

init_script=$1
action=$2

record() {
	{
		printf '%s' "$1"
		shift
		for arg in "$@"; do
			printf '\t%s' "$arg"
		done
		printf '\n'
	} >>"$PROCD_LOG"
}

# --- test shim for the config_* API ---------------------------------------------------------

_shim_package=

_shim_uci() {
	"$UCI_BIN" -c "$UCI_CONFIG_DIR" -q "$@"
}

config_load() {
	_shim_package=$1
	# Fail like the real thing on a file uci cannot parse.
	_shim_uci show "$_shim_package" >/dev/null
}

# config_get <var> <section> <option> [default]
config_get() {
	_shim_value=$(_shim_uci get "$_shim_package.$2.$3") || _shim_value=${4-}
	eval "$1=\$_shim_value"
}

# config_get_bool <var> <section> <option> [default]: 1/0 with UCI's boolean spellings.
config_get_bool() {
	config_get "$1" "$2" "$3" "${4-}"
	eval "_shim_value=\$$1"
	case "$_shim_value" in
	1 | on | true | yes | enabled) _shim_value=1 ;;
	0 | off | false | no | disabled) _shim_value=0 ;;
	*) _shim_value=${4-} ;;
	esac
	eval "$1=\$_shim_value"
}

# config_foreach <function> [type]: calls <function> <section name> for each section, in order.
config_foreach() {
	_shim_fn=$1
	_shim_type=${2-}
	# `uci -X show` prints `pkg.<name>=<type>` for each section, anonymous ones under their
	# internal cfgXXXXXX name, which `uci get` accepts.
	for _shim_section in $(_shim_uci -X show "$_shim_package" |
		sed -n "s/^$_shim_package\.\([^.=]*\)=\(.*\)$/\1 \2/p" |
		while read -r name type; do
			[ -z "$_shim_type" ] || [ "$type" = "$_shim_type" ] && echo "$name"
		done); do
		"$_shim_fn" "$_shim_section"
	done
}

# --- procd stubs -----------------------------------------------------------------------------

procd_open_service() { record procd_open_service "$@"; }
procd_close_service() { record procd_close_service "$@"; }
procd_open_instance() { record procd_open_instance "$@"; }
procd_set_param() { record procd_set_param "$@"; }
procd_append_param() { record procd_append_param "$@"; }
procd_close_instance() { record procd_close_instance "$@"; }
procd_open_trigger() { record procd_open_trigger "$@"; }
procd_close_trigger() { record procd_close_trigger "$@"; }
procd_add_reload_trigger() { record procd_add_reload_trigger "$@"; }
procd_add_interface_trigger() { record procd_add_interface_trigger "$@"; }
procd_add_reload_interface_trigger() { record procd_add_reload_interface_trigger "$@"; }
procd_add_config_trigger() { record procd_add_config_trigger "$@"; }
procd_add_validation() { record procd_add_validation "$@"; }
procd_send_signal() { record procd_send_signal "$@"; }
procd_kill() { record procd_kill "$@"; }
procd_running() { record procd_running "$@"; }
# rc.common's `start`, as called from reload_service.
start() { record start "$@"; }

# shellcheck disable=SC1090 # the script under test
. "$init_script"

case "$action" in
source) ;;
start)
	# What /etc/rc.common does for `start` with USE_PROCD=1 (procd_close_service runs the
	# service_triggers hook inside the trigger list).
	procd_open_service bpfqos "$init_script"
	start_service
	procd_open_trigger
	service_triggers
	procd_close_trigger
	procd_close_service
	;;
reload)
	reload_service
	;;
*)
	echo "procd-harness: unknown action '$action'" >&2
	exit 2
	;;
esac
