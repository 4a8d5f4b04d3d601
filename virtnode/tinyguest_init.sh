#!/bin/busybox sh
# /init of diskplane's tiny test guest (busybox-static initramfs). See docs/testing-guest.md.
#
# Kernel command line:
#   mode=poweroff   power off as soon as the work below is done
#   mode=wait       print "tick N disks=..." every second until the ACPI power button fires
#   markdev=auto    (default) the first block device whose sector 0 starts with DISKPLANE-MARKER
#   markdev=/dev/X  use this device (a blank second disk works); markdev=none skips the marker
# Console lines (stable, tests match them):
#   DISKPLANE-GUEST BOOTED mode=M
#   DISKPLANE-MARKER-READ dev=D value=[...]      (value empty when the sector held no marker)
#   DISKPLANE-MARKER-WRITTEN dev=D value=[DISKPLANE-MARKER count=N]
#   DISKPLANE-DISK name=vda size=BYTES            (one per block device)
#   DISKPLANE-ISO name=vdc label=cidata           (ISO9660 volume label, when one is found)
#   DISKPLANE-CIDATA meta-data: ...               (first lines of a cidata ISO's meta-data)
#   DISKPLANE-GUEST READY                         (everything above is done and synced)
#   tick N disks=vda,vdb                          (mode=wait only)
#   DISKPLANE-GUEST POWER-BUTTON                  (mode=wait, then power off)
/bin/busybox mkdir -p /bin /proc /sys /dev /tmp /mnt
/bin/busybox --install -s /bin
export PATH=/bin
mount -t devtmpfs devtmpfs /dev 2>/dev/null
mount -t proc proc /proc
mount -t sysfs sysfs /sys

mode=wait
markdev=auto
for arg in $(cat /proc/cmdline); do
  case "$arg" in
    mode=*) mode="${arg#mode=}" ;;
    markdev=*) markdev="${arg#markdev=}" ;;
  esac
done
echo "DISKPLANE-GUEST BOOTED mode=$mode"

for m in $(cat /lib/modules/load-order); do
  insmod "/lib/modules/$m.ko" 2>/dev/null || echo "DISKPLANE-GUEST insmod $m failed"
done

disks() {
  out=""
  for b in /sys/block/*; do
    n="${b##*/}"
    case "$n" in loop* | ram* | "*") continue ;; esac
    out="$out${out:+,}$n"
  done
  echo "$out"
}

first_sector() {
  dd if="$1" bs=512 count=1 2>/dev/null | tr -d '\000' | head -n 1
}

find_marker() {
  for b in /sys/class/block/*; do
    d="/dev/${b##*/}"
    [ -b "$d" ] || continue
    case "$(first_sector "$d")" in DISKPLANE-MARKER*) echo "$d"; return ;; esac
  done
}

do_marker() {
  dev="$markdev"
  if [ "$dev" = none ]; then
    echo "DISKPLANE-MARKER-READ dev=none value=[]"
    return
  fi
  if [ "$dev" = auto ]; then
    dev="$(find_marker)"
    if [ -z "$dev" ]; then
      echo "DISKPLANE-MARKER-READ dev=none value=[]"
      return
    fi
  fi
  i=0
  while [ ! -b "$dev" ] && [ $i -lt 50 ]; do usleep 100000; i=$((i + 1)); done
  old="$(first_sector "$dev")"
  echo "DISKPLANE-MARKER-READ dev=$dev value=[$old]"
  count=0
  case "$old" in DISKPLANE-MARKER\ count=*) count="${old#DISKPLANE-MARKER count=}" ;; esac
  case "$count" in '' | *[!0-9]*) count=0 ;; esac
  new="DISKPLANE-MARKER count=$((count + 1))"
  printf '%s\n' "$new" | dd of="$dev" bs=512 count=1 conv=sync,notrunc 2>/dev/null
  sync
  echo "DISKPLANE-MARKER-WRITTEN dev=$dev value=[$(first_sector "$dev")]"
}

inventory() {
  for b in /sys/block/*; do
    n="${b##*/}"
    case "$n" in loop* | ram* | "*") continue ;; esac
    echo "DISKPLANE-DISK name=$n size=$(($(cat "$b/size") * 512))"
    magic="$(dd if="/dev/$n" bs=1 skip=32769 count=5 2>/dev/null)"
    [ "$magic" = CD001 ] || continue
    label="$(dd if="/dev/$n" bs=1 skip=32808 count=32 2>/dev/null | tr -d '\000' | sed 's/ *$//')"
    echo "DISKPLANE-ISO name=$n label=$label"
    if [ "$label" = cidata ] && mount -t iso9660 -o ro "/dev/$n" /mnt 2>/dev/null; then
      head -n 5 /mnt/meta-data 2>/dev/null | while IFS= read -r line; do
        echo "DISKPLANE-CIDATA meta-data: $line"
      done
      umount /mnt
    fi
  done
}

# mode=wait: watch the ACPI power button. Each button's event device is opened here,
# before READY, so a press that comes right after READY is queued, not lost.
watch_power_button() {
  fd=3
  for ev in /sys/class/input/event*; do
    [ "$(cat "$ev/device/name" 2>/dev/null)" = "Power Button" ] || continue
    [ $fd -le 9 ] || break
    eval "exec $fd<\"/dev/input/${ev##*/}\"" || continue
    (
      # Block until the button sends an input event (24 bytes on x86_64); no acpid needed.
      until [ "$(eval "dd bs=24 count=1 <&$fd" 2>/dev/null | wc -c)" -ge 24 ]; do
        sleep 1
      done
      echo "DISKPLANE-GUEST POWER-BUTTON"
      sync
      poweroff -f
    ) &
    fd=$((fd + 1))
  done
}

do_marker
inventory
sync
[ "$mode" = wait ] && watch_power_button
echo "DISKPLANE-GUEST READY"

if [ "$mode" = wait ]; then
  n=0
  while true; do
    n=$((n + 1))
    echo "tick $n disks=$(disks)"
    sleep 1
  done
fi
sync
poweroff -f
