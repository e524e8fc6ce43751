"""What the emulated hosts say, in the host's display language (``culture``).

Windows renders event messages, error messages and status texts in the
host's language (the write-up's hosts run Japanese Windows Server 2016); enum
names (``Running``, ``Kerberos``), error ids and HRESULT codes stay as they
are. A client that matches English text finds nothing on such a host, so the
lab speaks ``ja-JP`` when a host is configured so.

English texts of the events come from real hosts' logs where they could be
found (docs/lab.md names the sources); the Japanese texts are the lab's own
translations, not Windows' wording (not verified): what matters is that they
are not English, keep the figures and the codes, and that a client must not
read them.
"""

from __future__ import annotations

from typing import Any

EN_US = "en-US"
JA_JP = "ja-JP"
CULTURES = (EN_US, JA_JP)

_TEXTS: dict[str, dict[str, str]] = {
    EN_US: {
        "status_ok": "Operating normally",
        "status_migrating": "Migrating ({percent}% complete)",
        "level_1": "Critical",
        "level_2": "Error",
        "level_3": "Warning",
        "level_4": "Information",
        "vm_not_found": 'Hyper-V was unable to find a virtual machine with name "{name}".',
        "access_denied": (
            "You do not have the required permission to complete this task. Contact the "
            "administrator of the authorization policy for the computer '{host}'."
        ),
        "invalid_state": (
            "The operation cannot be performed while the virtual machine is in its current state."
        ),
        "migration_failed": (
            "Virtual machine migration operation for '{vm}' failed at migration source "
            "'{source}'. (Virtual machine ID {vm_id})\n{reason}"
        ),
        "not_the_source": "Could not establish a connection with host '{host}'.",
        "no_such_host": (
            "The Virtual Machine Management Service failed to establish a connection for a "
            "Virtual Machine migration with host '{host}': No such host is known. (0x80072AF9)."
        ),
        "already_there": "The virtual machine is already on host '{host}'.",
        "protocol_version": (
            "The Virtual Machine Management Service failed to establish a connection for a "
            "Virtual Machine migration with host '{host}': The connection could not be "
            "established because protocol version 6.0 is not supported."
        ),
        "connection_lost": (
            "Failed to send data for a Virtual Machine migration: An existing connection was "
            "forcibly closed by the remote host. (0x80072746)."
        ),
        "no_credentials": (
            "Failed to establish a connection with host '{host}': No credentials are available "
            "in the security package (0x8009030E).\n"
            "The Virtual Machine Management Service failed to authenticate the connection for a "
            "Virtual Machine migration at the source host: no suitable credentials available. "
            "Make sure the operation is initiated on the source host of the migration, or the "
            "source host is configured to use Kerberos for the authentication of migration "
            "connections and Constrained Delegation is enabled for the host in Active Directory."
        ),
        "unknown_credentials": (
            "Failed to establish a connection with host '{host}': The credentials supplied to "
            "the package were not recognized (0x8009030D)."
        ),
        "migration_disabled": (
            "The Virtual Machine Management Service on host '{host}' is not configured for "
            "virtual machine migration."
        ),
        "cancelled": "The operation was cancelled.",
        "event_20415": (
            "The Virtual Machine Management service successfully completed the live migration "
            "of virtual machine '{vm}' with a blackout time of {seconds} seconds (VMID {vm_id})."
        ),
        "event_20417": (
            "The Virtual Machine Management service successfully completed the live migration "
            "of virtual machine '{vm}' with an unexpectedly long blackout time of {seconds} "
            "seconds (VMID {vm_id})."
        ),
        "event_20418": (
            "The Virtual Machine Management service successfully completed the live migration "
            "of virtual machine '{vm}' (VMID {vm_id})."
        ),
        "event_22507": (
            "'{vm}' live migration summary: brownout {brownout} seconds, blackout {seconds} "
            "seconds, {pages} memory pages transferred. (Virtual machine ID {vm_id})"
        ),
        "event_22508": (
            "'{vm}' live migration brownout (memory transfer) took {brownout} seconds. "
            "(Virtual machine ID {vm_id})"
        ),
        "event_22509": (
            "'{vm}' live migration blackout took {seconds} seconds; {pages} dirty pages were "
            "transferred during the blackout. (Virtual machine ID {vm_id})"
        ),
        "event_21502": "Live migration of 'Virtual Machine {vm}' failed.\n{detail}",
    },
    JA_JP: {
        "status_ok": "正常稼働中",
        "status_migrating": "移行中 ({percent}% 完了)",
        "level_1": "重大",
        "level_2": "エラー",
        "level_3": "警告",
        "level_4": "情報",
        "vm_not_found": (
            'Hyper-V は、名前が "{name}" の仮想マシンを見つけることができませんでした。'
        ),
        "access_denied": (
            "このタスクを完了するために必要なアクセス許可がありません。コンピューター "
            "'{host}' の承認ポリシーの管理者に問い合わせてください。"
        ),
        "invalid_state": "仮想マシンの現在の状態では、この操作を実行できません。",
        "migration_failed": (
            "仮想マシン '{vm}' の移行操作は、移行元 '{source}' で失敗しました。"
            "(仮想マシン ID {vm_id})\n{reason}"
        ),
        "not_the_source": "ホスト '{host}' との接続を確立できませんでした。",
        "no_such_host": (
            "仮想マシン管理サービスは、ホスト '{host}' との仮想マシンの移行用の接続を確立"
            "できませんでした: そのようなホストは不明です。(0x80072AF9)。"
        ),
        "already_there": "仮想マシンは既にホスト '{host}' 上にあります。",
        "protocol_version": (
            "仮想マシン管理サービスは、ホスト '{host}' との仮想マシンの移行用の接続を確立"
            "できませんでした: プロトコル バージョン 6.0 がサポートされていないため、接続を"
            "確立できませんでした。"
        ),
        "connection_lost": (
            "仮想マシンの移行用のデータを送信できませんでした: 既存の接続はリモート ホストに"
            "強制的に切断されました。(0x80072746)。"
        ),
        "no_credentials": (
            "ホスト '{host}' との接続を確立できませんでした: セキュリティ パッケージに使用"
            "可能な資格情報がありません (0x8009030E)。\n"
            "仮想マシン管理サービスは、移行元ホストで仮想マシンの移行用の接続を認証できません"
            "でした: 適切な資格情報がありません。"
        ),
        "unknown_credentials": (
            "ホスト '{host}' との接続を確立できませんでした: パッケージに指定された資格情報が"
            "認識されませんでした (0x8009030D)。"
        ),
        "migration_disabled": (
            "ホスト '{host}' の仮想マシン管理サービスは、仮想マシンの移行用に構成されていません。"
        ),
        "cancelled": "操作は取り消されました。",
        "event_20415": (
            "仮想マシン管理サービスは、仮想マシン '{vm}' のライブ マイグレーションを正常に"
            "完了しました。ブラックアウト時間は {seconds} 秒でした (VMID {vm_id})。"
        ),
        "event_20417": (
            "仮想マシン管理サービスは、仮想マシン '{vm}' のライブ マイグレーションを完了"
            "しましたが、ブラックアウト時間が予想外に長く {seconds} 秒でした (VMID {vm_id})。"
        ),
        "event_20418": (
            "仮想マシン管理サービスは、仮想マシン '{vm}' のライブ マイグレーションを正常に"
            "完了しました (VMID {vm_id})。"
        ),
        "event_22507": (
            "'{vm}' のライブ マイグレーションの概要: ブラウンアウト {brownout} 秒、"
            "ブラックアウト {seconds} 秒、転送されたメモリ ページ {pages}。(仮想マシン ID {vm_id})"
        ),
        "event_22508": (
            "'{vm}' のライブ マイグレーションのブラウンアウト (メモリ転送) に {brownout} 秒"
            "かかりました。(仮想マシン ID {vm_id})"
        ),
        "event_22509": (
            "'{vm}' のライブ マイグレーションのブラックアウトに {seconds} 秒かかりました。"
            "ブラックアウト中に {pages} 個のダーティ ページが転送されました。"
            "(仮想マシン ID {vm_id})"
        ),
        "event_21502": "'仮想マシン {vm}' のライブ マイグレーションに失敗しました。\n{detail}",
    },
}


def text(culture: str, key: str, **values: Any) -> str:
    """The text ``key`` in ``culture`` (English for an unknown culture)."""
    table = _TEXTS.get(culture, _TEXTS[EN_US])
    return table[key].format(**values)


def check_culture(culture: str) -> str:
    if culture not in CULTURES:
        raise ValueError(f"culture must be one of {', '.join(CULTURES)}, not {culture!r}")
    return culture
