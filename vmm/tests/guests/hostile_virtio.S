# A hostile raw 64-bit guest for virtio-blk in MMIO slot 0: four rounds, each set up the way a driver would and
# then broken on purpose; after each it prints what the device said on COM1, and at the end it prints "ok" and
# resets through the i8042, which shows the VMM still serves the console and port I/O after every round.
#   1 L: a descriptor loop (0 -> 1 -> 0)
#   2 A: the descriptor table at a garbage address (0xffffffff_00000000), refused at DRIVER_OK
#   3 G: a giant data descriptor (4 GiB - 1 bytes) for a read
#   4 J: the avail index jumps 0x8000 ahead of the device
# Each round prints its letter then "N" when Status has DEVICE_NEEDS_RESET, else the request's status byte + '0'.
# Built with: as --64 -o g.o hostile_virtio.S && objcopy -O binary -j .text g.o hostile_virtio.bin
.intel_syntax noprefix
.code64
.text
    # Map 0xd0000000 (2 MiB page) through a new page directory at 0xc000 in PDPT slot 3 (as virtio_blk_read.S).
    mov rax, 0xc003
    mov [0xa018], rax
    mov rax, 0xd0000083
    mov [0xc400], rax
    mov rax, cr3
    mov cr3, rax
    mov ebx, 0xd0001000
    mov dx, 0x3f8

.macro SETUP desc_high
    mov dword ptr [rbx+0x70], 0          # reset
    mov word ptr [0x102002], 0           # forget the last round's used index
    mov word ptr [0x101002], 0
    mov byte ptr [0x103100], 0xff
    mov dword ptr [rbx+0x70], 1
    mov dword ptr [rbx+0x70], 3
    mov dword ptr [rbx+0x24], 1
    mov dword ptr [rbx+0x20], 1          # VIRTIO_F_VERSION_1
    mov dword ptr [rbx+0x70], 0xb
    mov dword ptr [rbx+0x30], 0
    mov dword ptr [rbx+0x38], 16
    mov dword ptr [rbx+0x80], 0x100000
    mov dword ptr [rbx+0x84], \desc_high
    mov dword ptr [rbx+0x90], 0x101000
    mov dword ptr [rbx+0x94], 0
    mov dword ptr [rbx+0xa0], 0x102000
    mov dword ptr [rbx+0xa4], 0
    mov dword ptr [rbx+0x44], 1
    mov dword ptr [rbx+0x70], 0xf        # DRIVER_OK
.endm

# A read request (type IN, sector 0): header, one data descriptor of \len bytes with \flags, status byte.
.macro REQUEST len, flags, next
    mov qword ptr [0x100000], 0x103000
    mov dword ptr [0x100008], 16
    mov word ptr [0x10000c], 1           # NEXT
    mov word ptr [0x10000e], 1
    mov qword ptr [0x100010], 0x104000
    mov dword ptr [0x100018], \len
    mov word ptr [0x10001c], \flags
    mov word ptr [0x10001e], \next
    mov qword ptr [0x100020], 0x103100
    mov dword ptr [0x100028], 1
    mov word ptr [0x10002c], 2           # WRITE
    mov word ptr [0x101004], 0           # avail ring[0] = head 0
.endm

# Notify with avail idx = \idx, wait for NEEDS_RESET or a used entry, print \letter and the outcome.
.macro ROUND letter, idx
    mov word ptr [0x101002], \idx
    mov dword ptr [rbx+0x50], 0          # QueueNotify (KVM ioeventfd -> the VMM's event loop)
1:
    pause
    mov eax, [rbx+0x70]
    test eax, 0x40
    jnz 2f
    cmp word ptr [0x102002], 0
    je 1b
    mov al, \letter
    out dx, al
    mov al, [0x103100]
    add al, 0x30
    out dx, al
    jmp 3f
2:
    mov al, \letter
    out dx, al
    mov al, 'N'
    out dx, al
3:
.endm

    SETUP 0
    REQUEST 512, 3, 0                    # NEXT|WRITE back to 0: a loop
    ROUND 'L', 1

    SETUP 0xffffffff                     # refused at DRIVER_OK: NEEDS_RESET without a notify
    mov al, 'A'
    out dx, al
    mov eax, [rbx+0x70]
    shr eax, 6
    and al, 1
    add al, '0'                          # '1': NEEDS_RESET
    out dx, al

    SETUP 0
    REQUEST 0xffffffff, 3, 2
    ROUND 'G', 1

    SETUP 0
    REQUEST 512, 3, 2
    ROUND 'J', 0x8000

    # A normal read after all that: the device works again once reset.
    SETUP 0
    REQUEST 512, 3, 2
    ROUND 'R', 1
    mov al, ' '
    out dx, al
    mov al, [0x104000]
    out dx, al
    mov al, 10
    out dx, al
    mov al, 0xfe
    out 0x64, al
    hlt
