# A raw 64-bit guest that drives the first virtio-mmio slot as a virtio-blk driver would: it maps the MMIO page,
# negotiates VERSION_1, sets up queue 0, reads sector 0 into 0x104000 through a 3-descriptor chain, waits for the
# used ring, prints "<status><first 8 bytes><interrupt status>\n" on COM1 and resets through the i8042.
# Built with: as --64 -o g.o virtio_blk_read.S && objcopy -O binary -j .text g.o g.bin (bytes in virtio_devices.rs).
.intel_syntax noprefix
.code64
.text
    # Map 0xd0000000 (2 MiB page) through a new page directory at 0xc000 in PDPT slot 3.
    mov rax, 0xc003
    mov [0xa018], rax
    mov rax, 0xd0000083
    mov [0xc400], rax
    mov rax, cr3
    mov cr3, rax
    mov ebx, 0xd0001000
    mov dword ptr [rbx+0x70], 1          # ACKNOWLEDGE
    mov dword ptr [rbx+0x70], 3          # DRIVER
    mov dword ptr [rbx+0x24], 1          # DriverFeaturesSel = 1
    mov dword ptr [rbx+0x20], 1          # VIRTIO_F_VERSION_1
    mov dword ptr [rbx+0x70], 0xb        # FEATURES_OK
    mov dword ptr [rbx+0x30], 0          # QueueSel
    mov dword ptr [rbx+0x38], 16         # QueueNum
    mov dword ptr [rbx+0x80], 0x100000   # descriptor table
    mov dword ptr [rbx+0x84], 0
    mov dword ptr [rbx+0x90], 0x101000   # avail ring
    mov dword ptr [rbx+0x94], 0
    mov dword ptr [rbx+0xa0], 0x102000   # used ring
    mov dword ptr [rbx+0xa4], 0
    mov dword ptr [rbx+0x44], 1          # QueueReady
    mov dword ptr [rbx+0x70], 0xf        # DRIVER_OK
    # Request header (type IN, sector 0) at 0x103000: guest RAM starts zeroed.
    mov qword ptr [0x100000], 0x103000
    mov dword ptr [0x100008], 16
    mov word ptr [0x10000c], 1           # NEXT
    mov word ptr [0x10000e], 1
    mov qword ptr [0x100010], 0x104000
    mov dword ptr [0x100018], 512
    mov word ptr [0x10001c], 3           # NEXT | WRITE
    mov word ptr [0x10001e], 2
    mov qword ptr [0x100020], 0x103100
    mov dword ptr [0x100028], 1
    mov word ptr [0x10002c], 2           # WRITE
    mov byte ptr [0x103100], 0xff
    mov word ptr [0x101004], 0           # avail ring[0] = head 0
    mov word ptr [0x101002], 1           # avail idx = 1
    mov dword ptr [rbx+0x50], 0          # QueueNotify (KVM ioeventfd)
wait:
    pause
    cmp word ptr [0x102002], 1
    jne wait
    mov dx, 0x3f8
    mov al, [0x103100]
    add al, 0x30
    out dx, al
    mov rsi, 0x104000
    mov rcx, 8
print:
    lodsb
    out dx, al
    loop print
    mov eax, [rbx+0x60]                  # InterruptStatus: 1 = used ring
    add al, 0x30
    out dx, al
    mov al, 10
    out dx, al
    mov al, 0xfe
    out 0x64, al
    hlt
