"""Request and response bodies. JSON is camelCase, as in Codesphere's API."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from fastapi import Path
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, StringConstraints
from pydantic.alias_generators import to_camel

from terrace.spec.names import ENV_NAME, SECRET_NAME
from terrace.store.roles import Role

MAX_ID = 2_147_483_647  # a 32-bit INTEGER on PostgreSQL
Id = Annotated[int, Field(ge=1, le=MAX_ID)]
TeamId = Annotated[int, Path(alias="teamId", ge=1, le=MAX_ID)]
WorkspaceId = Annotated[int, Path(alias="workspaceId", ge=1, le=MAX_ID)]
UserId = Annotated[int, Path(alias="userId", ge=1, le=MAX_ID)]
KeyId = Annotated[int, Path(alias="keyId", ge=1, le=MAX_ID)]

# Visible text: no control characters (they break logs and terminals; PostgreSQL refuses NUL).
Name = Annotated[
    str,
    StringConstraints(
        strip_whitespace=True, min_length=1, max_length=100, pattern=r"^[^\x00-\x1f\x7f]+$"
    ),
]
Email = Annotated[
    str,
    StringConstraints(
        strip_whitespace=True, max_length=254, pattern=r"^[^@\s\x00-\x1f]+@[^@\s\x00-\x1f]+$"
    ),
]
EnvName = Annotated[str, StringConstraints(min_length=1, max_length=255, pattern=ENV_NAME.pattern)]
SecretName = Annotated[
    str, StringConstraints(min_length=1, max_length=128, pattern=SECRET_NAME.pattern)
]
Text = Annotated[str, StringConstraints(max_length=65_536, pattern=r"^[^\x00]*$")]


class Model(BaseModel):
    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, from_attributes=True, extra="forbid"
    )


class UserCreate(Model):
    name: Name
    email: Email
    cluster_admin: bool = False


class UserOut(Model):
    id: int
    name: str
    email: str
    cluster_admin: bool
    created_at: datetime


class KeyCreate(Model):
    name: Name
    expires_at: AwareDatetime | None = Field(
        default=None, description="When the key stops working."
    )
    user_id: Id | None = Field(
        default=None, description="Whose key: yourself unless you are a cluster admin."
    )


class KeyOut(Model):
    id: int
    name: str
    prefix: str = Field(description="The first characters of the key, to recognise it.")
    user_id: int
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None
    last_used_at: datetime | None


class KeyCreated(KeyOut):
    key: str = Field(description="The API key. Shown only in this response: store it now.")


class TeamCreate(Model):
    name: Name


class TeamOut(Model):
    id: int
    name: str
    created_at: datetime
    role: Role | None = Field(
        description="Your role in the team; null for a cluster admin who is not a member."
    )


class MemberAdd(Model):
    user_id: Id | None = None
    email: Email | None = None
    role: Role = Role.DEVELOPER


class MemberRole(Model):
    role: Role


class MemberOut(Model):
    user_id: int
    name: str
    email: str
    role: Role
    created_at: datetime


class WorkspaceCreate(Model):
    team_id: Id
    name: Name
    git_url: (
        Annotated[str, StringConstraints(min_length=1, max_length=2048, pattern=r"^[^\x00-\x1f]+$")]
        | None
    ) = None
    git_ref: (
        Annotated[str, StringConstraints(min_length=1, max_length=255, pattern=r"^[^\x00-\x1f]+$")]
        | None
    ) = None
    path: (
        Annotated[str, StringConstraints(min_length=1, max_length=4096, pattern=r"^[^\x00-\x1f]+$")]
        | None
    ) = Field(
        default=None, description="A folder on the server (cluster admins only), used in place."
    )


class WorkspacePatch(Model):
    name: Name


class WorkspaceOut(Model):
    id: int
    team_id: int
    name: str
    source: Literal["git", "local"]
    git_url: str | None
    git_ref: str | None
    commit: str | None
    path: str | None = Field(description="The server folder, for a local workspace.")
    created_at: datetime


class EnvVarItem(Model):
    name: EnvName
    value: Text


class SecretValue(Model):
    value: Annotated[str, StringConstraints(max_length=65_536)]


class SecretOut(Model):
    name: str
    workspace_id: int | None
    created_at: datetime
    updated_at: datetime


class VaultKeyOut(Model):
    id: int
    created_at: datetime
    retired_at: datetime | None
    primary: bool = Field(description="Seals new secrets.")
    secrets: int = Field(description="How many secrets it seals.")


class Health(Model):
    status: Literal["ok"]
    version: str
    database: str
