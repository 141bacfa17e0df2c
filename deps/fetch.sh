#!/usr/bin/env bash
# Fetch, verify and unpack the third-party sources pinned in deps/lock.
#
#   deps/fetch.sh NAME...   download NAME's file into $DEPS_DIR/dl/ unless it is already there with the
#                           pinned sha256, then unpack it into $DEPS_DIR/NAME/ unless its .stamp matches
#   deps/fetch.sh --all     the same for every entry of the lock
#   deps/fetch.sh --check   verify the files already in $DEPS_DIR/dl/ against the lock (no network)
#
# Environment:
#   DEPS_DIR       where everything goes (default: <repo>/build/deps)
#   DEPS_LOCK      the lock file (default: deps/lock beside this script)
#   PYTHON         python used for pip and zipfile (default: python3)
#   FETCH_VERBOSE  1 = show apt-get/pip output on the terminal too (it always goes to $DEPS_DIR/logs/NAME.log)
#
# Lock kinds: apt-src (Debian trixie source package, orig tarball only, through a private apt state that
# never touches the system's), apt-deb (Debian bookworm i386 binary package, the same way; unpacked with
# dpkg-deb -x), pypi-sdist, pypi-wheel (pip download from the configured index), shared (a file in
# ../shared/deps/ beside the repo).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)
root=$(cd "$here/.." && pwd -P)
lock=${DEPS_LOCK:-$here/lock}
deps=${DEPS_DIR:-$root/build/deps}
shared=$root/../shared/deps
python=${PYTHON:-python3}

die()  { printf 'fetch: %s\n' "$*" >&2; exit 1; }
note() { printf 'fetch: %s\n' "$*"; }
# A path as the user would type it from the repo root.
rel() { case $1 in "$root"/*) printf '%s\n' "${1#"$root"/}" ;; *) printf '%s\n' "$1" ;; esac; }
sha256_of() { local s; s=$(sha256sum -- "$1") && printf '%s\n' "${s%% *}"; }
size_of() { awk -v b="$(stat -c %s -- "$1")" 'BEGIN { printf "%.1f MB", b / 1048576 }'; }

usage() {
	sed -n '2,8s/^# \{0,1\}//p' "${BASH_SOURCE[0]}"
}

# ---------------------------------------------------------------------------------------------- lock
[[ -r $lock ]] || die "lock file $(rel "$lock") not found"
lockname=$(rel "$lock")
declare -A KIND PKG VER FILE SHA
names=()
while read -r n k p v f s extra || [[ -n ${n:-} ]]; do
	[[ -z ${n:-} || $n == \#* ]] && continue
	[[ -n ${s:-} && -z ${extra:-} ]] ||
		die "$lockname: malformed entry '$n' (want 6 columns: name kind package version file sha256)"
	[[ $s =~ ^[0-9a-f]{64}$ ]] || die "$lockname: '$n' has a malformed sha256 '$s'"
	case $k in apt-src | apt-deb | pypi-sdist | pypi-wheel | shared) ;; *) die "$lockname: '$n' has unknown kind '$k'" ;; esac
	KIND[$n]=$k PKG[$n]=$p VER[$n]=$v FILE[$n]=$f SHA[$n]=$s
	names+=("$n")
done <"$lock"

# ------------------------------------------------------------------------------------------ --check
check_all() {
	local n f got bad=0
	for n in "${names[@]}"; do
		f=$deps/dl/${FILE[$n]}
		if [[ ! -f $f ]]; then
			note "$n: not downloaded yet ($(rel "$f"))"
		elif got=$(sha256_of "$f") && [[ $got == "${SHA[$n]}" ]]; then
			note "$n: ok ($(rel "$f"))"
		else
			note "$n: sha256 mismatch for ${FILE[$n]} (got $got, want ${SHA[$n]}); delete $(rel "$f") and fetch again, or check $lockname" >&2
			bad=1
		fi
	done
	return "$bad"
}

case ${1:-} in
"" ) usage >&2; exit 2 ;;
-h | --help) usage; exit 0 ;;
--check) check_all; exit ;;
--all) set -- "${names[@]}" ;;
esac
for n in "$@"; do
	[[ -n ${KIND[$n]+x} ]] || die "$n: not in $lockname (known: ${names[*]})"
done

# ------------------------------------------------------------------------------------------- set-up
mkdir -p "$deps"
deps=$(cd "$deps" && pwd -P)
dl=$deps/dl
logs=$deps/logs
mkdir -p "$dl" "$logs"

# One run at a time per DEPS_DIR (make -j may start several).
if command -v flock >/dev/null; then
	exec 9>"$deps/.fetch.lock"
	if ! flock -n 9; then
		note "waiting for another deps/fetch.sh run to finish ..."
		flock 9
	fi
fi
rm -rf -- "$deps"/.tmp.*   # left by an interrupted run; safe, we hold the lock
work=$(mktemp -d "$deps/.tmp.XXXXXX")
trap 'rm -rf -- "$work"' EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# run_logged LOG CMD...: CMD's output goes to LOG (and to the terminal with FETCH_VERBOSE=1).
run_logged() {
	local log=$1
	shift
	printf '+ %s\n' "$*" >>"$log"
	if [[ ${FETCH_VERBOSE:-0} == 1 ]]; then
		"$@" 2>&1 | tee -a "$log"
	else
		"$@" >>"$log" 2>&1
	fi
}

# ----------------------------------------------------------------------------------- private apt
# One private apt state per kind, made on first use: apt-src reads Debian trixie's source index,
# apt-deb bookworm's i386 binary index. Only the mirror's URI comes from the system's configuration
# (read here, at run time); the system's package lists, status and cache stay untouched.
declare -A APT_READY
apt_cmd=()
apt_conf_src=
apt_setup() {   # kind name log: point apt_cmd at the private state for kind (reading its index once)
	local kind=$1 n=$2 log=$3 uri a=$work/apt-$1 what
	local opts=(-o Dir::Etc::SourceList=/dev/null -o "Dir::Etc::SourceParts=$a/etc/sources.list.d"
		-o "Dir::State::Lists=$a/lists" -o "Dir::Cache=$a/cache" -o APT::Sandbox::User=root)
	[[ $kind == apt-deb ]] && opts+=(-o APT::Architecture=i386 -o APT::Architectures=i386 -o Dir::State::status=/dev/null)
	apt_cmd=(env "APT_CONFIG=$a/apt.conf" apt-get "${opts[@]}")
	[[ -n ${APT_READY[$kind]:-} ]] && return 0
	apt_conf_src=/etc/apt/sources.list.d/debian.sources
	if [[ -f $apt_conf_src ]]; then
		uri=$(awk '$1 == "URIs:" { print $2; exit }' "$apt_conf_src")
	else
		apt_conf_src=/etc/apt/sources.list
		uri=$(sed -n -E '/^[[:space:]]*deb[[:space:]]/{s/^[[:space:]]*deb[[:space:]]+(\[[^]]*\][[:space:]]+)?([^[:space:]]+).*/\2/p;q;}' \
			"$apt_conf_src" 2>/dev/null || true)
	fi
	[[ -n $uri ]] || die "$n: no Debian mirror found in $apt_conf_src; cannot fetch Debian packages"
	mkdir -p "$a/lists/partial" "$a/cache/archives/partial" "$a/etc/sources.list.d"
	if [[ $kind == apt-src ]]; then
		what="Debian trixie source index"
		printf 'Types: deb-src\nURIs: %s\nSuites: trixie\nComponents: main\n' "$uri"
	else
		what="Debian bookworm i386 package index"
		printf 'Types: deb\nURIs: %s\nSuites: bookworm\nComponents: main\nArchitectures: i386\n' "$uri"
	fi >"$a/etc/sources.list.d/private.sources"
	echo "Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg" >>"$a/etc/sources.list.d/private.sources"
	# The system's apt configuration (proxies etc.) still applies, but not its update hooks, which
	# would refresh system caches (appstream, packagekit): apt reads Dir::Etc::Main after the parts
	# directory, so a private main file can clear them.
	{
		[[ -n ${APT_CONFIG:-} && -r $APT_CONFIG ]] && printf '#include "%s";\n' "$APT_CONFIG"
		printf 'Dir::Etc::Main "%s";\n' "$a/main.conf"
	} >"$a/apt.conf"
	{
		[[ -r /etc/apt/apt.conf ]] && printf '#include "/etc/apt/apt.conf";\n'
		printf '#clear APT::Update::Pre-Invoke;\n#clear APT::Update::Post-Invoke;\n'
		printf '#clear APT::Update::Post-Invoke-Success;\n'
	} >"$a/main.conf"
	note "$n: reading the $what (apt-get update) ..."
	run_logged "$log" "${apt_cmd[@]}" --error-on=any update ||
		die "$n: could not read the $what; check network access to the Debian mirror configured in $apt_conf_src (log: $(rel "$log"))"
	APT_READY[$kind]=1
}

# -------------------------------------------------------------------------------------- download
# fetch_file NAME: make sure $dl/FILE exists with the pinned sha256, downloading it if needed.
fetch_file() {
	local n=$1
	local kind=${KIND[$n]} pkg=${PKG[$n]} ver=${VER[$n]} file=${FILE[$n]} want=${SHA[$n]}
	local dest=$dl/$file log=$logs/$n.log tmp=$work/dl-$n got origin
	if [[ -f $dest ]]; then
		got=$(sha256_of "$dest")
		[[ $got == "$want" ]] && return 0
		note "$n: $(rel "$dest") does not match $lockname; fetching it again"
		rm -f -- "$dest"
	fi
	mkdir -p "$tmp"
	: >"$log"
	case $kind in
	shared)
		origin="../shared/deps/$file is a different file"
		[[ -f $shared/$file ]] ||
			die "$n: ../shared/deps/$file not found (looked in $shared); the project's shared/ folder must sit beside the repo"
		cp -- "$shared/$file" "$tmp/$file"
		chmod u+w -- "$tmp/$file"   # shared/ may be laid read-only
		;;
	apt-src)
		origin="the registry served a different file"
		apt_setup apt-src "$n" "$log"
		note "$n: downloading $file (Debian trixie source $pkg=$ver) ..."
		(cd "$tmp" && run_logged "$log" "${apt_cmd[@]}" source --download-only "$pkg=$ver") ||
			die "$n: could not download $file (Debian trixie source package $pkg=$ver); check network access to the Debian source mirror configured in $apt_conf_src and that trixie still has this version (log: $(rel "$log"))"
		[[ -f $tmp/$file ]] ||
			die "$n: apt-get source $pkg=$ver did not bring $file (got: $(cd "$tmp" && echo *)); check $lockname"
		;;
	apt-deb)
		origin="the registry served a different file"
		apt_setup apt-deb "$n" "$log"
		note "$n: downloading $file (Debian bookworm i386 package $pkg=$ver) ..."
		(cd "$tmp" && run_logged "$log" "${apt_cmd[@]}" download "$pkg=$ver") ||
			die "$n: could not download $file (Debian bookworm i386 package $pkg=$ver); check network access to the Debian mirror configured in $apt_conf_src and that bookworm still has this version (apt-cache policy $pkg shows what it has now; pin that in $lockname) (log: $(rel "$log"))"
		[[ -f $tmp/$file ]] ||
			die "$n: apt-get download $pkg=$ver did not bring $file (got: $(cd "$tmp" && echo *)); check $lockname"
		;;
	pypi-sdist | pypi-wheel)
		origin="the registry served a different file"
		local only=--no-binary
		[[ $kind == pypi-wheel ]] && only=--only-binary
		note "$n: downloading $file (pip $pkg==$ver) ..."
		run_logged "$log" "$python" -m pip download "$only" :all: --no-deps -d "$tmp" "$pkg==$ver" ||
			die "$n: could not download $file (pip download $pkg==$ver); check network access to the Python package index configured for pip (python3 -m pip config list) and that this version is still published (log: $(rel "$log"))"
		[[ -f $tmp/$file ]] ||
			die "$n: pip download $pkg==$ver brought $(cd "$tmp" && echo *) instead of $file; check $lockname"
		;;
	esac
	got=$(sha256_of "$tmp/$file")
	if [[ $got != "$want" ]]; then
		rm -f -- "$tmp/$file"
		die "$n: sha256 mismatch for $file (got $got, want $want) — $origin; check $lockname"
	fi
	mv -f -- "$tmp/$file" "$dest"
	rm -rf -- "$tmp"
	[[ $kind == shared ]] || note "$n: ... ok ($(size_of "$dest"))"
}

# ---------------------------------------------------------------------------------------- unpack
# link_models DIR: make every .gguf inside DIR reachable at DIR's top level; print their paths.
link_models() {
	local d=$1 out=$2 g base
	while IFS= read -r g; do
		base=${g##*/}
		[[ -e $d/$base ]] || ln -s -- "${g#"$d"/}" "$d/$base"
		note "${out##*/}: model $(rel "$out/$base")"
	done < <(find "$d" -mindepth 2 -name '*.gguf' -type f | sort)
}

# unpack NAME: unpack $dl/FILE into $deps/NAME/ (atomically) unless NAME/.stamp holds its sha256.
unpack() {
	local n=$1
	local file=${FILE[$n]} want=${SHA[$n]} out=$deps/$n tmp=$work/unpack-$n tops
	if [[ -f $out/.stamp && $(<"$out/.stamp") == "$want" ]]; then
		note "$n: up to date ($(rel "$out"))"
		local g
		for g in "$out"/*.gguf; do [[ -e $g ]] && note "$n: model $(rel "$g")"; done
		return 0
	fi
	mkdir -p "$tmp"
	case $file in
	*.whl | *.zip)
		"$python" -m zipfile -e "$dl/$file" "$tmp" ||
			die "$n: could not unzip $(rel "$dl/$file"); delete it and fetch again"
		;;
	*.deb)
		dpkg-deb -x "$dl/$file" "$tmp" ||
			die "$n: could not unpack $(rel "$dl/$file"); delete it and fetch again"
		;;
	*.tar | *.tar.* | *.tgz)
		tops=$(tar -tf "$dl/$file" | sed 's#^\./##' | cut -d/ -f1 | sort -u) ||
			die "$n: could not read $(rel "$dl/$file"); delete it and fetch again"
		[[ -n $tops && $tops != *$'\n'* ]] ||
			die "$n: $file has no single top-level folder to strip (has: ${tops//$'\n'/ })"
		tar -xf "$dl/$file" -C "$tmp" --strip-components=1 --no-same-owner --touch ||
			die "$n: could not unpack $(rel "$dl/$file"); delete it and fetch again"
		;;
	*) die "$n: do not know how to unpack $file" ;;
	esac
	# The model wheel keeps its .gguf deep inside; put a link to it at the top of the tree.
	if [[ $n == smollm2 ]]; then
		link_models "$tmp" "$out"
		compgen -G "$tmp/*.gguf" >/dev/null || die "$n: no .gguf model inside $file; check $lockname"
	fi
	printf '%s\n' "$want" >"$tmp/.stamp"
	if [[ -e $out ]]; then
		mv -- "$out" "$work/old-$n"
	fi
	mv -- "$tmp" "$out"
	rm -rf -- "$work/old-$n"
	note "$n: unpacked into $(rel "$out")"
}

for n in "$@"; do
	fetch_file "$n"
	unpack "$n"
done
