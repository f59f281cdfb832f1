"""The "Operators" group, holding the permission to change what agents track
(``dashboard.operate_agents``). Users without it see the controls read-only."""

from django.db import migrations

GROUP = "Operators"


def create_operators(apps, schema_editor):
    # the permission is normally created after all migrations ran (post_migrate):
    # create it here so that the group can hold it; post_migrate then finds it
    ContentType = apps.get_model("contenttypes", "ContentType")
    Permission = apps.get_model("auth", "Permission")
    Group = apps.get_model("auth", "Group")
    content_type, _ = ContentType.objects.get_or_create(app_label="dashboard", model="toggle")
    permission, _ = Permission.objects.get_or_create(
        content_type=content_type, codename="operate_agents",
        defaults={"name": "Can change what agents track"})
    group, _ = Group.objects.get_or_create(name=GROUP)
    group.permissions.add(permission)


def remove_operators(apps, schema_editor):
    apps.get_model("auth", "Group").objects.filter(name=GROUP).delete()


class Migration(migrations.Migration):
    dependencies = [
        ("dashboard", "0004_toggles"),
        ("auth", "0012_alter_user_first_name_max_length"),
        ("contenttypes", "0002_remove_content_type_name"),
    ]

    operations = [migrations.RunPython(create_operators, remove_operators)]
