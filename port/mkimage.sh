#!/usr/bin/env bash
# One bootable BIOS image: GRUB (Debian's grub-pc-bin, via grub-mkrescue + xorriso) loading the
# kernel with its command line and the model as a Multiboot module. The result is a hybrid ISO:
# it boots as a CD (qemu -cdrom) and as a disk written raw to a USB stick (qemu -hda).
#   port/mkimage.sh KERNEL MODEL OUT [CMDLINE [MODULE...]]
# The kernel goes in gzip-compressed (GRUB's multiboot loader unpacks it); the model goes in
# as it is, since the kernel maps its pages in place. Each further MODULE (a TLS certificate and
# key) is a boot module of its own, /its-name, as the model is.
set -euo pipefail

[[ $# -ge 3 ]] || { echo "usage: $0 KERNEL MODEL OUT [CMDLINE [MODULE...]]" >&2; exit 2; }
kernel=$1 model=$2 out=$3 cmdline=${4:-}
shift $(($# < 4 ? $# : 4))
extra=("$@")
for f in "$kernel" "$model" "${extra[@]}"; do
	[[ -f $f ]] || { echo "mkimage: $f does not exist" >&2; exit 1; }
done
[[ $cmdline != *$'\n'* && $cmdline != *'"'* ]] || { echo "mkimage: the command line may not hold newlines or double quotes" >&2; exit 1; }
name=$(basename "$model")        # the name the kernel sees: a symlink's, not its target's
model=$(realpath "$model")
[[ $name =~ ^[A-Za-z0-9._+-]+$ ]] || { echo "mkimage: model file name '$name' needs to be plain (letters, digits, . _ + -)" >&2; exit 1; }

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
stage=$tmp/iso log=$tmp/log
mkdir -p "$stage/boot/grub"
strip -o "$stage/boot/cllm.elf" "$kernel"
gzip -9n "$stage/boot/cllm.elf"
# a hard link keeps the 100 MB model from being copied into the staging folder
ln "$model" "$stage/boot/$name" 2>/dev/null || cp "$model" "$stage/boot/$name"
cat > "$stage/boot/grub/grub.cfg" <<EOF
set timeout=0
set default=0
serial --unit=0 --speed=115200
terminal_input serial console
terminal_output serial console
insmod gzio
menuentry "cllm" {
	echo "GRUB: loading the kernel and /boot/$name"
	multiboot /boot/cllm.elf.gz $cmdline
	module --nounzip /boot/$name /$name
$(for m in "${extra[@]}"; do printf '\tmodule --nounzip /boot/%s /%s\n' "$(basename "$m")" "$(basename "$m")"; done)
	boot
}
EOF
for m in "${extra[@]}"; do
	b=$(basename "$m")
	[[ $b =~ ^[A-Za-z0-9._+-]+$ && $b != "$name" ]] || { echo "mkimage: module file name '$b' needs to be plain and not the model's" >&2; exit 1; }
	cp "$m" "$stage/boot/$b"
done
# only the BIOS platform: the kernel is a Multiboot (i386 PC) kernel
grub-mkrescue -o "$out.tmp" --compress=xz -d /usr/lib/grub/i386-pc \
	--install-modules="multiboot gzio iso9660 biosdisk part_msdos normal configfile echo serial terminal" \
	--fonts= --locales= --themes= "$stage" >"$log" 2>&1 || { cat "$log" >&2; exit 1; }
mv "$out.tmp" "$out"
total=$(stat -c %s "$out")
msize=$(stat -c %s "$model")
echo "image: $out $((total / 1024)) KiB: model $((msize / 1024)) KiB + kernel and GRUB $(((total - msize) / 1024)) KiB"
