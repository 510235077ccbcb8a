# shellcheck shell=bash
# apt_install PKG...: installs the Debian packages of the list that are not installed yet (one
# `apt-get update` only when something is missing). Sourced by install-deps.sh and cross-deps.sh.
apt_install() {
	local missing=() p
	for p in "$@"; do
		dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
	done
	if ((${#missing[@]})); then
		echo "installing: ${missing[*]}"
		apt-get update -qq
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
	fi
}
